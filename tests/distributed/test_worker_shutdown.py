"""SIGTERM to ``manage.py tuft_worker`` mid-step: it finishes the step (or, past
``TUFT_SHUTDOWN_TIMEOUT_S``, hands it back), hands the rest of the run to other
workers, logs what happens and exits 0; another worker carries on.

The step is held by the ``TUFT_FAILPOINT`` hook (released by a file), so the
signal lands mid-step by construction.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.api.helpers import post
from tests.conftest import MODEL_NAME
from tests.distributed.cluster import Cluster, postgres_database, redis_reachable, wait_for_file

REDIS_URL = "redis://127.0.0.1:6379/9"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Cluster]:
    if not redis_reachable(REDIS_URL):
        pytest.skip("Redis is not running at 127.0.0.1:6379 (start it with .ci/services.sh)")
    c = Cluster(home=tmp_path_factory.mktemp("shutdown-cluster"), model_dir=tiny_model_dir, redis_url=REDIS_URL,
                database_url=postgres_database())
    try:
        c.start_api()
        c.create_tenant("alice")
        yield c
    finally:
        c.stop()


class Api:
    """Plain-HTTP protocol calls against the cluster's API (request ids are needed)."""

    def __init__(self, cluster: Cluster) -> None:
        self.url, self.key = cluster.url, cluster.keys["alice"]

    def call(self, path: str, body: dict) -> dict:
        import httpx

        r = httpx.post(f"{self.url}/api/v1/{path}", json=body, headers={"X-API-Key": self.key}, timeout=60)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def result(self, request_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.call("retrieve_future", {"request_id": request_id, "allow_metadata_only": False})
            if body.get("type") != "try_again":
                return body
        raise AssertionError(f"future {request_id} did not finish in {timeout} s")

    def new_run(self, model_seq_id: int) -> str:
        session_id = self.call("create_session", {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"})[
            "session_id"]
        created = self.call("create_model", {"session_id": session_id, "model_seq_id": model_seq_id,
                                             "base_model": MODEL_NAME, "lora_config": {"rank": 2},
                                             "type": "create_model"})["request_id"]
        return str(self.result(created)["model_id"])

    def optim_step(self, model_id: str, seq_id: int) -> str:
        return str(self.call("optim_step", {"model_id": model_id, "seq_id": seq_id, "type": "optim_step",
                                            "adam_params": {"learning_rate": 1e-3}})["request_id"])


def sigterm(cluster: Cluster, name: str, timeout: float = 120) -> int:
    process = cluster.workers[name]
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"worker {name} did not exit within {timeout} s of SIGTERM:\n{cluster.log('worker-' + name)}")


def test_sigterm_mid_step_finishes_it_and_hands_the_run_over(cluster: Cluster, tmp_path: Path) -> None:
    api = Api(cluster)
    marker = tmp_path / "w1-mid-step"
    cluster.start_worker("w1", {"TUFT_FAILPOINT": f"optim_step:{marker}", "TUFT_SHUTDOWN_TIMEOUT_S": "300"})
    cluster.wait_workers("w1")
    model_id = api.new_run(0)
    first, second = api.optim_step(model_id, 1), api.optim_step(model_id, 2)
    wait_for_file(marker, 120, cluster)

    cluster.workers["w1"].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while "received SIGTERM" not in cluster.log("worker-w1"):
        assert time.monotonic() < deadline, cluster.log("worker-w1")
        time.sleep(0.2)
    assert cluster.workers["w1"].poll() is None, "it waits for the step"
    Path(f"{marker}.release").touch()
    code = sigterm(cluster, "w1")  # (a second SIGTERM after it exited is a no-op)
    log = cluster.log("worker-w1")
    assert code == 0, log
    assert "handing run" in log and "exiting with status 0" in log
    assert "terminate called" not in log
    assert "metrics" in api.result(first, timeout=30), "the step in progress was finished and recorded"

    cluster.start_worker("w2")
    assert "metrics" in api.result(second), "another worker carried the run on"
    # An idle worker stops at once, too.
    cluster.wait_workers("w2")
    assert sigterm(cluster, "w2") == 0
    assert "received SIGTERM" in cluster.log("worker-w2")


def test_a_step_still_running_at_the_timeout_is_handed_back(cluster: Cluster, tmp_path: Path) -> None:
    api = Api(cluster)
    marker = tmp_path / "w3-mid-step"
    cluster.start_worker("w3", {"TUFT_FAILPOINT": f"optim_step:{marker}", "TUFT_SHUTDOWN_TIMEOUT_S": "2"})
    cluster.wait_workers("w3")
    model_id = api.new_run(1)
    step = api.optim_step(model_id, 1)
    wait_for_file(marker, 120, cluster)  # never released
    code = sigterm(cluster, "w3")
    log = cluster.log("worker-w3")
    assert code == 0, log
    assert f"{step} still running after 2 s; handed back" in log and "exiting with status 0" in log

    cluster.start_worker("w4")  # re-runs the step from the run's automatic checkpoint
    assert "metrics" in api.result(step)
