"""Persistence mode ``disabled`` (the default, embedded worker): a restart loses
what was in memory, and says so.

Old sessions are closed, unfinished futures fail with a clear "server
restarted" error instead of hanging, and checkpoints stay usable: a new
client resumes from save_state and ends with the uninterrupted run's losses.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
import tinker

from tests.conftest import start_server, write_models_yaml
from tests.distributed.training import ADAM, STEPS, datum, new_run, step


def test_restart_fails_unfinished_futures_and_keeps_checkpoints(
    tmp_path: Path, tiny_model_dir: Path, reference_losses: list[float]
) -> None:
    config = write_models_yaml(tmp_path / "models.yaml", tiny_model_dir)
    server = start_server(tmp_path / "home", config)
    try:
        key = server.create_tenant("alice")
        training_client = new_run(tinker.ServiceClient(base_url=server.url, api_key=key))
        losses = [step(training_client) for _ in range(2)]
        path = training_client.save_state("two").result().path

        # An operation that cannot finish before the restart: its seq_id leaves
        # a gap, so it waits (up to the 60 s gap timeout) for the missing ones.
        headers = {"X-API-Key": key}
        body = {"model_id": training_client.model_id, "seq_id": 50, "adam_params": ADAM.model_dump(),
                "type": "optim_step"}
        waiting = httpx.post(f"{server.url}/api/v1/optim_step", json=body, headers=headers, timeout=30).json()

        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)
        server.stop()  # its manage.py process
        same_db = {"DATABASE_URL": server.env["DATABASE_URL"]} if "DATABASE_URL" in server.env else None
        server = start_server(server.home, config, extra_env=same_db, port=int(server.url.rsplit(":", 1)[1]),
                              manage=False)

        r = httpx.post(f"{server.url}/api/v1/retrieve_future", json={"request_id": waiting["request_id"]},
                       headers=headers, timeout=60)
        assert r.json()["category"] == "server" and "server restarted" in r.json()["error"]
        # The old session is closed: its run is gone from memory and says so.
        with pytest.raises(Exception, match="released"):
            training_client.forward_backward([datum()], "cross_entropy").result()

        resumed = tinker.ServiceClient(base_url=server.url, api_key=key)
        training_client = resumed.create_training_client_from_state_with_optimizer(path).result(timeout=120)
        losses += [step(training_client) for _ in range(STEPS - 2)]
        assert losses == pytest.approx(reference_losses, rel=1e-5)
    finally:
        server.stop()
