"""Distributed mode end to end: the SDK against an API process and RQ worker processes.

One deployment for the module (Redis at 127.0.0.1:6379 in a namespace of its
own, persistence mode redis_url, PostgreSQL when it answers); the tests kill
and restart its processes and leave it with two live workers.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import tinker

from tests.conftest import MODEL_NAME
from tests.distributed.cluster import Cluster, postgres_database, redis_reachable, wait_for_file
from tests.distributed.training import ADAM, STEPS, greedy, new_run, step, submit_step

REDIS_URL = "redis://127.0.0.1:6379/9"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Cluster]:
    if not redis_reachable(REDIS_URL):
        pytest.skip("Redis is not running at 127.0.0.1:6379 (start it with .ci/services.sh)")
    c = Cluster(home=tmp_path_factory.mktemp("cluster"), model_dir=tiny_model_dir, redis_url=REDIS_URL,
                database_url=postgres_database())
    try:
        c.start_api()
        c.start_worker("w1")
        c.start_worker("w2")
        c.create_tenant("alice")
        c.create_tenant("bob")
        c.wait_workers("w1", "w2")
        yield c
    finally:
        c.stop()


def client(cluster: Cluster, tenant: str = "alice") -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=cluster.url, api_key=cluster.keys[tenant])


def test_two_tenants_train_and_sample_through_two_workers(cluster: Cluster, reference_losses: list[float]) -> None:
    results: dict[str, object] = {}

    def tenant(name: str) -> None:
        try:
            training_client = new_run(client(cluster, name))
            results[name] = [step(training_client) for _ in range(STEPS)]
            results[name + ":sample"] = greedy(training_client.save_weights_and_get_sampling_client())
        except Exception as exc:  # surfaced by the asserts below
            results[name] = exc

    threads = [threading.Thread(target=tenant, args=(name,)) for name in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert results["alice"] == pytest.approx(reference_losses, rel=1e-5), cluster.logs()
    assert results["bob"] == pytest.approx(reference_losses, rel=1e-5)
    assert results["alice:sample"] == results["bob:sample"]


def test_workers_freeze_their_long_lived_objects(cluster: Cluster) -> None:
    """A worker's full GC passes skip start-up's and the model's objects (tuft_project.gc_freeze),
    as the server's do: a pass stops the worker's lease renewal along with its step."""
    import re

    new_run(client(cluster))  # a worker loads the base model, if no test did yet
    logs = "".join(p.read_text(errors="replace") for p in sorted(cluster.home.glob("worker-*.log")))
    froze = re.findall(r"gc: froze (\d+) long-lived objects after ([^(]+?) \(", logs)
    assert any(what == "worker start-up" and int(n) > 100_000 for n, what in froze), froze
    assert any(what.startswith("loading base model") for _, what in froze), froze


def test_operators_see_queue_depth_and_worker_liveness(cluster: Cluster) -> None:
    status = cluster.queues()  # manage.py tuft_queues --json
    assert status["mode"] == "distributed" and status["persistence"] == "redis_url"
    assert {cluster.worker_id("w1"), cluster.worker_id("w2")} <= {w["name"] for w in status["workers"] if w["alive"]}
    assert status["operations"] == {"pending": 0, "running": 0}
    assert {f"{cluster.namespace}-train", f"{cluster.namespace}-sample"} <= set(status["queues"])

    # RQ's dashboard: anonymous visitors are sent to the admin login; staff see the queues.
    r = httpx.get(f"{cluster.url}/django-rq/", follow_redirects=False, timeout=10)
    assert r.status_code == 302 and "/admin/login/" in r.headers["location"]
    cluster.manage("createsuperuser", "--noinput", "--username", "ops", "--email", "ops@example.com",
                   env={"DJANGO_SUPERUSER_PASSWORD": "ops-password-1"})
    with httpx.Client(base_url=cluster.url, timeout=10) as web:
        web.get("/admin/login/")
        r = web.post("/admin/login/?next=/django-rq/", follow_redirects=True, data={
            "username": "ops", "password": "ops-password-1", "next": "/django-rq/",
            "csrfmiddlewaretoken": web.cookies["csrftoken"]})
        assert r.status_code == 200 and f"{cluster.namespace}-train" in r.text


def test_seq_order_and_resubmission_hold_across_processes(cluster: Cluster) -> None:
    """Operations arriving out of order run in seq order; a resubmitted seq_id gets its future back."""
    training_client = new_run(client(cluster))
    step(training_client)  # seq 1 forward_backward, seq 2 optim_step: AdamW step 1
    headers = {"X-API-Key": cluster.keys["alice"]}

    def optim(seq_id: int) -> str:
        body = {"model_id": training_client.model_id, "seq_id": seq_id, "adam_params": ADAM.model_dump(),
                "type": "optim_step"}
        return httpx.post(f"{cluster.url}/api/v1/optim_step", json=body, headers=headers, timeout=30).json()["request_id"]

    later, earlier = optim(4), optim(3)  # seq 4 arrives first
    assert optim(4) == later and optim(2) != later  # resubmissions: the existing futures

    def result(request_id: str) -> dict:
        while True:
            r = httpx.post(f"{cluster.url}/api/v1/retrieve_future", json={"request_id": request_id},
                           headers=headers, timeout=60).json()
            if r.get("type") != "try_again":
                return r

    assert result(earlier)["metrics"]["step:max"] == 2.0
    assert result(later)["metrics"]["step:max"] == 3.0


def test_run_survives_api_and_worker_restarts(cluster: Cluster, reference_losses: list[float]) -> None:
    service_client = client(cluster)
    training_client = new_run(service_client)
    losses = [step(training_client), step(training_client)]
    sampler = training_client.save_weights_and_get_sampling_client()
    before = greedy(sampler)

    # Every process dies while step 3 is pending: no worker is left, and the API
    # restarts with the step queued. New workers, which never saw the run,
    # resume it from its last completed step; the client just keeps polling.
    cluster.kill_worker("w1")
    cluster.kill_worker("w2")
    fb, opt = submit_step(training_client)
    cluster.wait_sql_count("select count(*) from training_app_operation where training_run_id = %s", 8,
                           training_client.model_id)
    cluster.kill_api()
    cluster.start_api()
    cluster.start_worker("w3")
    cluster.start_worker("w4")
    losses.append(float(fb.result().metrics["loss:sum"]))
    opt.result()
    losses.append(step(training_client))
    assert losses == pytest.approx(reference_losses, rel=1e-5), cluster.logs()
    assert greedy(sampler) == before  # the sampling session survived too


def test_worker_killed_mid_step_is_taken_over(cluster: Cluster, reference_losses: list[float],
                                               tmp_path: Path) -> None:
    """SIGKILL mid forward_backward, then mid optim_step: each runs again on a live worker, once."""
    for name in list(cluster.workers):
        cluster.kill_worker(name)
    fb_marker, opt_marker = tmp_path / "fb.pid", tmp_path / "opt.pid"
    armed = {"TUFT_FAILPOINT": f"forward_backward:{fb_marker},optim_step:{opt_marker}"}
    cluster.start_worker("f1", armed)
    cluster.start_worker("f2", armed)
    training_client = new_run(client(cluster))
    fb, opt = submit_step(training_client)

    # The first worker stalls after applying forward_backward in memory; kill it.
    cluster.kill_pid(int(wait_for_file(fb_marker, 120, cluster)))
    # The other one takes the run over once the lease runs out, redoes the
    # forward_backward and stalls in optim_step after updating its weights; kill it.
    cluster.kill_pid(int(wait_for_file(opt_marker, 120, cluster)))
    cluster.start_worker("r1")
    cluster.start_worker("r2")
    losses = [float(fb.result().metrics["loss:sum"])]
    opt.result()
    losses += [step(training_client) for _ in range(STEPS - 1)]
    # Each step was applied exactly once: the same losses as the uninterrupted run.
    assert losses == pytest.approx(reference_losses, rel=1e-5), cluster.logs()
    attempts = cluster.sql_rows(
        "select kind, attempts from training_app_operation where training_run_id = %s and seq_id in (1, 2)",
        training_client.model_id,
    )
    assert sorted(attempts) == [("forward_backward", 2), ("optim_step", 2)]


def test_worker_killed_mid_sample_is_retried(cluster: Cluster, tmp_path: Path) -> None:
    """SIGKILL a worker in the middle of a sample: a live worker samples it again; no hang."""
    base = client(cluster).create_sampling_client(base_model=MODEL_NAME).result(timeout=120)
    expected = greedy(base)  # the same greedy answer, before any fault
    for name in list(cluster.workers):
        cluster.kill_worker(name)
    marker = tmp_path / "sample.pid"
    cluster.start_worker("s1", {"TUFT_FAILPOINT": f"sample:{marker}"})
    answer: dict[str, object] = {}
    waiter = threading.Thread(target=lambda: answer.setdefault("tokens", greedy(base)))
    waiter.start()
    cluster.kill_pid(int(wait_for_file(marker, 120, cluster)))
    cluster.start_worker("r1")
    cluster.start_worker("r2")
    waiter.join(timeout=180)
    assert not waiter.is_alive(), "the sample never finished after its worker was killed\n" + cluster.logs()
    assert answer["tokens"] == expected
