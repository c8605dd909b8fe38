"""retrieve_future long polls: woken by completion events, answered even while sync views are stuck.

The server here has the completion sweeper (the once-every-few-seconds safety
net) effectively off and a long ``TUFT_LONG_POLL_S``, so a poll that returns
a result was woken by the completion event itself.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.api.helpers import post, wait_future
from tests.conftest import MODEL_NAME, LiveServer, start_server, write_models_yaml

LONG_POLL_S = 120
API_THREADS = 2  # the pool of threads for sync views (tuft_project.asgi_handler), small on purpose


@pytest.fixture(scope="module")
def quiet_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("long-poll")
    srv = start_server(home, write_models_yaml(home / "models.yaml", tiny_model_dir), extra_env={
        "TUFT_LONG_POLL_SWEEP_S": "3600", "TUFT_LONG_POLL_S": str(LONG_POLL_S), "TUFT_API_THREADS": str(API_THREADS)})
    try:
        srv.create_tenant("alice")
        yield srv
    finally:
        srv.stop()


def new_run(server: LiveServer, key: str) -> str:
    session_id = post(server, "create_session", key, {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"}
                      ).json()["session_id"]
    created = post(server, "create_model", key, {"session_id": session_id, "model_seq_id": 0,
                                                 "base_model": MODEL_NAME, "lora_config": {"rank": 2},
                                                 "type": "create_model"}).json()["request_id"]
    return str(wait_future(server, key, created).json()["model_id"])


def optim_step(server: LiveServer, key: str, model_id: str, seq_id: int) -> str:
    r = post(server, "optim_step", key, {"model_id": model_id, "seq_id": seq_id, "type": "optim_step",
                                         "adam_params": {"learning_rate": 1e-3}})
    assert r.status_code == 200, r.text
    return str(r.json()["request_id"])


def retrieve(server: LiveServer, key: str, request_id: str, timeout: float) -> httpx.Response:
    return post(server, "retrieve_future", key, {"request_id": request_id, "allow_metadata_only": False},
                timeout=timeout)


def test_a_waiting_poll_is_woken_by_the_completion(quiet_server: LiveServer) -> None:
    key = quiet_server.keys["alice"]
    model_id = new_run(quiet_server, key)
    # seq 2 waits for seq 1, which is not sent yet: its poll has to wait.
    second = optim_step(quiet_server, key, model_id, 2)
    answers: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: answers.append(retrieve(quiet_server, key, second, LONG_POLL_S + 60)))
    waiter.start()
    time.sleep(1)  # let the poll start waiting (the test is valid either way)
    optim_step(quiet_server, key, model_id, 1)
    waiter.join(timeout=LONG_POLL_S + 90)
    assert answers, "the poll never answered"
    body = answers[0].json()
    assert answers[0].status_code == 200 and body.get("type") != "try_again", body
    assert "metrics" in body


@contextlib.contextmanager
def database_write_lock(server: LiveServer) -> Iterator[None]:
    """Hold the database's write lock from outside, so the server's sync views that write are stuck."""
    url = server.env.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        import psycopg

        with psycopg.connect(url) as conn:  # one transaction until the block ends
            conn.execute("LOCK TABLE sessions_app_clientsession IN ACCESS EXCLUSIVE MODE")
            yield
            conn.rollback()
        return
    conn = sqlite3.connect(server.home / "db.sqlite3", timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_a_ready_result_is_answered_while_sync_views_are_stuck(quiet_server: LiveServer) -> None:
    """A poll of a finished operation answers while every API thread is stuck on the database's write lock.

    More requests that write are sent than the server has threads for sync
    views, so all of them are taken (and one request queues): the poll must
    need none of them. Every stuck request completes once the lock is gone.
    """
    key = quiet_server.keys["alice"]
    model_id = new_run(quiet_server, key)
    done = optim_step(quiet_server, key, model_id, 1)
    assert "metrics" in wait_future(quiet_server, key, done).json()
    stuck: list[httpx.Response] = []
    with database_write_lock(quiet_server):
        blocked = [threading.Thread(target=lambda: stuck.append(post(
            quiet_server, "create_session", key, {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"},
            timeout=120))) for _ in range(API_THREADS + 1)]
        for t in blocked:
            t.start()
        time.sleep(1)  # let them reach the lock (the test is valid either way)
        answer = retrieve(quiet_server, key, done, timeout=20)
        assert answer.status_code == 200 and "metrics" in answer.json(), answer.text
        assert all(t.is_alive() for t in blocked), "the writes were not held up by the lock: the test proved nothing"
    for t in blocked:
        t.join(timeout=120)
    assert len(stuck) == API_THREADS + 1 and all(r.status_code == 200 for r in stuck), \
        "the stuck requests complete once the lock is gone"


def test_a_revoked_key_stops_working_at_once_on_every_path(quiet_server: LiveServer) -> None:
    """No authentication is cached: the next request after a revocation is refused, long poll included."""
    key = quiet_server.keys["alice"]
    model_id = new_run(quiet_server, key)
    done = optim_step(quiet_server, key, model_id, 1)
    assert "metrics" in wait_future(quiet_server, key, done).json()
    second = quiet_server.manage("create_tenant", "alice", "--add-key").strip().splitlines()[-1]
    first_answer = retrieve(quiet_server, second, done, timeout=20)
    assert first_answer.status_code == 200  # the tenant's future, any key
    # Once the key's use is recorded the key is checked on the event loop and the
    # answer comes from memory (training_app.ready_results): the same answer.
    again = retrieve(quiet_server, second, done, timeout=20)
    assert again.status_code == 200 and again.content == first_answer.content
    quiet_server.manage("shell", "-c", (
        "from sessions_app.actions import do_revoke_api_key; from sessions_app.models import ApiKey, hash_key; "
        f"do_revoke_api_key(ApiKey.objects.get(key_hash=hash_key({second!r})))"))
    assert retrieve(quiet_server, second, done, timeout=20).status_code == 401
    assert post(quiet_server, "session_heartbeat", second, {"session_id": "sess-x", "type": "session_heartbeat"}
                ).status_code == 401
    assert retrieve(quiet_server, key, done, timeout=20).status_code == 200  # the other key still works


def test_a_just_finished_result_is_only_answered_to_its_tenant(quiet_server: LiveServer) -> None:
    """The answer kept in memory for a poll (training_app.ready_results) is still the tenant's only:
    another tenant's key gets the same 404 as for a future that does not exist, every time."""
    key = quiet_server.keys["alice"]
    other = quiet_server.keys.get("mallory") or quiet_server.create_tenant("mallory")
    model_id = new_run(quiet_server, key)
    done = optim_step(quiet_server, key, model_id, 1)
    answer = wait_future(quiet_server, key, done)
    assert "metrics" in answer.json()
    for _ in range(3):  # the first request records the key's use; the next ones take the quick check
        refused = retrieve(quiet_server, other, done, timeout=20)
        assert refused.status_code == 404, refused.text
        assert refused.json()["code"] == "not_found"
        assert retrieve(quiet_server, key, done, timeout=20).content == answer.content
    assert retrieve(quiet_server, "tml-not-a-key", done, timeout=20).status_code == 401


def test_a_deactivated_tenant_is_refused_at_once_even_for_a_just_finished_result(quiet_server: LiveServer) -> None:
    key = quiet_server.create_tenant("dora")
    model_id = new_run(quiet_server, key)
    done = optim_step(quiet_server, key, model_id, 1)
    answer = wait_future(quiet_server, key, done)
    assert "metrics" in answer.json()
    assert retrieve(quiet_server, key, done, timeout=20).content == answer.content  # from memory, key checked on the loop
    quiet_server.manage("shell", "-c", (
        "from sessions_app.models import Tenant; Tenant.objects.filter(name='dora').update(is_active=False)"))
    assert retrieve(quiet_server, key, done, timeout=20).status_code == 401


def test_the_server_freezes_its_long_lived_objects(quiet_server: LiveServer) -> None:
    """Full GC passes, which stop every thread, skip start-up's and the model's objects
    (tuft_project.gc_freeze): the server froze them after start-up and after the load."""
    import re

    new_run(quiet_server, quiet_server.keys["alice"])  # loads the base model, if no test did yet
    counts = {what: int(n) for n, what in re.findall(r"gc: froze (\d+) long-lived objects after ([^(]+?) \(",
                                                     quiet_server.log())}
    assert counts.get("start-up", 0) > 100_000, counts
    assert counts.get(f"loading base model {MODEL_NAME}", 0) > counts["start-up"], counts
