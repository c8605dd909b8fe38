"""SIGTERM to a training server: it finishes (or, past the timeout, abandons) the running
operation, fails what is queued with a clear error, logs each step and exits 0.

The running operation is held mid-step by the ``TUFT_FAILPOINT`` test hook
(released by a file), so "mid-training" is certain, not a matter of timing.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.api.test_long_poll import new_run, optim_step
from tests.conftest import LiveServer, start_server, write_models_yaml

SHUTDOWN_ERROR = "the server shut down before this operation finished; resubmit it"
POLL_S = 300  # one long poll spans the whole shutdown


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def operation_rows(server: LiveServer, request_ids: list[str]) -> dict[str, tuple[str, str]]:
    """request id -> (status, error), read from the stopped server's database."""
    query = "SELECT request_id, status, error FROM training_app_operation WHERE request_id IN ({})"
    url = server.env.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        import psycopg

        with psycopg.connect(url) as conn:
            rows = conn.execute(query.format(",".join(["%s"] * len(request_ids))), request_ids).fetchall()
    else:
        with sqlite3.connect(server.home / "db.sqlite3") as conn:
            rows = conn.execute(query.format(",".join("?" * len(request_ids))), request_ids).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def training_server(tmp_path: Path, tiny_model_dir: Path, shutdown_timeout_s: int) -> tuple[LiveServer, Path]:
    marker = tmp_path / "optim-step-running"
    server = start_server(tmp_path / "home", write_models_yaml(tmp_path / "models.yaml", tiny_model_dir), extra_env={
        "TUFT_FAILPOINT": f"optim_step:{marker}", "TUFT_SHUTDOWN_TIMEOUT_S": str(shutdown_timeout_s),
        "TUFT_LONG_POLL_S": str(POLL_S)})
    server.create_tenant("alice")
    return server, marker


def start_polling(server: LiveServer, key: str, request_id: str) -> tuple[threading.Thread, list]:
    """Send a retrieve_future now (the request is on the server's socket when this returns); read it in a thread."""
    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=POLL_S + 60)
    conn.request("POST", "/api/v1/retrieve_future", body=json.dumps({"request_id": request_id,
                                                                     "allow_metadata_only": False}),
                 headers={"X-API-Key": key, "Content-Type": "application/json"})
    answers: list = []

    def read() -> None:
        try:
            response = conn.getresponse()
            answers.append((response.status, json.loads(response.read())))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            answers.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=read)
    thread.start()
    # Sent is not yet waiting: a SIGTERM before the server has taken the poll in would find
    # nothing to answer. The server's own gauge says when it waits (bounded, not timed).
    wait_until(lambda: long_polls_waiting(server) >= 1, 120, "the server to hold the poll")
    return thread, answers


def long_polls_waiting(server: LiveServer) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    match = re.search(r"^tuft_long_polls_waiting (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def stop_gracefully(server: LiveServer, timeout: float) -> int:
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise AssertionError(f"the server did not exit within {timeout} s of SIGTERM:\n{server.log()}")


def test_sigterm_mid_step_finishes_it_fails_the_queue_and_exits_0(tmp_path: Path, tiny_model_dir: Path) -> None:
    server, marker = training_server(tmp_path, tiny_model_dir, shutdown_timeout_s=300)
    try:
        key = server.keys["alice"]
        model_id = new_run(server, key)
        running = optim_step(server, key, model_id, 1)
        queued = optim_step(server, key, model_id, 2)
        wait_until(marker.exists, 120, "the optim_step to be mid-step")
        poller, answers = start_polling(server, key, queued)

        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "starting no more operations" in server.log(), 60, "the shutdown to begin")
        assert server.process.poll() is None, "it waits for the running operation"
        Path(f"{marker}.release").touch()  # the step goes on and finishes
        code = server.process.wait(timeout=120)
        poller.join(timeout=60)
    finally:
        server.stop()
    log = server.log()
    assert code == 0, log
    assert "every running operation finished" in log
    assert "1 unfinished operation(s) failed" in log and "exits with status 0" in log
    assert "terminate called" not in log
    # The client waiting on the queued operation was told, before the server went away.
    assert answers == [(200, {"error": SHUTDOWN_ERROR, "category": "server"})]
    rows = operation_rows(server, [running, queued])
    assert rows[running][0] == "completed"
    assert rows[queued] == ("failed", SHUTDOWN_ERROR)


def test_an_operation_still_running_at_the_timeout_fails_clearly(tmp_path: Path, tiny_model_dir: Path) -> None:
    server, marker = training_server(tmp_path, tiny_model_dir, shutdown_timeout_s=2)
    try:
        key = server.keys["alice"]
        model_id = new_run(server, key)
        stuck = optim_step(server, key, model_id, 1)  # never released
        wait_until(marker.exists, 120, "the optim_step to be mid-step")
        poller, answers = start_polling(server, key, stuck)
        code = stop_gracefully(server, timeout=120)
        poller.join(timeout=60)
    finally:
        server.stop()
    log = server.log()
    assert code == 0, log
    assert "still running after 2 s; abandoning them" in log and "exits with status 0" in log
    assert answers == [(200, {"error": SHUTDOWN_ERROR, "category": "server"})]
    assert operation_rows(server, [stuck])[stuck] == ("failed", SHUTDOWN_ERROR)


@pytest.mark.parametrize("signum", [signal.SIGINT])
def test_an_idle_server_stops_at_once_on_sigint(tmp_path: Path, tiny_model_dir: Path, signum: int) -> None:
    server = start_server(tmp_path / "home", write_models_yaml(tmp_path / "models.yaml", tiny_model_dir),
                          manage=False)
    try:
        server.process.send_signal(signum)
        code = server.process.wait(timeout=60)
    finally:
        server.stop()
    assert code == 0, server.log()
    assert "received SIGINT" in server.log()
