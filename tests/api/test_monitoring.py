"""/metrics (Prometheus) and /api/v1/healthz against live servers.

The metrics move when work is done; healthz answers 503 naming the failing
part when the database or Redis is unreachable (a server pointed at an unused
Redis port, and an SQLite database whose directory is moved away, so no shared
service is touched).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import tinker
from prometheus_client.parser import text_string_to_metric_families
from tinker import types

from tests.conftest import MODEL_NAME, ROOT, LiveServer, free_port, write_models_yaml

TIMEOUT = 120


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    r = httpx.get(f"{url}/metrics", headers=headers or {}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text) for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_healthz_checks_every_part(server: LiveServer) -> None:
    r = httpx.get(f"{server.url}/api/v1/healthz", timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert {name for name, c in body["checks"].items() if c["ok"]} == {"database", "dispatch", "workers"}


def test_metrics_move_when_work_is_done(server: LiveServer) -> None:
    before = scrape(server.url)
    for name in ("tuft_queue_depth", "tuft_active", "tuft_workers_alive", "tuft_checkpoint_bytes"):
        assert any(key[0] == name for key in before), name
    assert value(before, "tuft_workers_alive") == 2  # the embedded training and sampling lanes
    service = tinker.ServiceClient(base_url=server.url, api_key=server.keys["bob"])
    sampler = service.create_sampling_client(base_model=MODEL_NAME).result(timeout=TIMEOUT)
    sampler.sample(types.ModelInput.from_ints([5, 17, 300]), 1,
                   types.SamplingParams(max_tokens=4, temperature=0)).result(timeout=TIMEOUT)
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    tokens = [5, 17, 300, 42, 99]
    training.forward_backward([types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": types.TensorData(data=tokens[1:], dtype="int64", shape=[4])},
    )], "cross_entropy").result(timeout=TIMEOUT)
    training.save_weights_for_sampler("metrics-test").result(timeout=TIMEOUT)
    # The sample's usage is recorded before its future resolves; its metrics right after.
    deadline = time.monotonic() + 30
    while True:
        after = scrape(server.url)
        if value(after, "tuft_operations_total", kind="save_weights_for_sampler", outcome="completed") > value(
                before, "tuft_operations_total", kind="save_weights_for_sampler", outcome="completed"):
            break
        assert time.monotonic() < deadline, "operation counters did not move"
        time.sleep(0.5)
    for kind in ("sample", "forward_backward", "create_model"):
        assert value(after, "tuft_operations_total", kind=kind, outcome="completed") > value(
            before, "tuft_operations_total", kind=kind, outcome="completed"), kind
    assert value(after, "tuft_tokens_total", base_model=MODEL_NAME, kind="sampled") >= value(
        before, "tuft_tokens_total", base_model=MODEL_NAME, kind="sampled") + 1
    assert value(after, "tuft_tokens_total", base_model=MODEL_NAME, kind="prefill") >= value(
        before, "tuft_tokens_total", base_model=MODEL_NAME, kind="prefill") + 3
    assert value(after, "tuft_tokens_total", base_model=MODEL_NAME, kind="trained") >= value(
        before, "tuft_tokens_total", base_model=MODEL_NAME, kind="trained") + 4
    assert value(after, "tuft_queue_wait_seconds_count", lane="sample") > value(
        before, "tuft_queue_wait_seconds_count", lane="sample")
    assert value(after, "tuft_checkpoint_bytes", kind="sampler_weights") > value(
        before, "tuft_checkpoint_bytes", kind="sampler_weights")
    assert value(after, "tuft_active", object="training_runs") >= 1
    route = "api/v1/asample"
    assert value(after, "tuft_http_requests_total", route=route, method="POST", status="200") >= 1
    assert value(after, "tuft_http_request_duration_seconds_count", route=route, method="POST") >= 1


def test_operation_log_lines_name_request_and_tenant(server: LiveServer) -> None:
    service = tinker.ServiceClient(base_url=server.url, api_key=server.keys["bob"])
    sampler = service.create_sampling_client(base_model=MODEL_NAME).result(timeout=TIMEOUT)
    with pytest.raises(Exception):  # a token outside the vocabulary: the operation fails and is logged
        sampler.sample(types.ModelInput.from_ints([10**6]), 1, types.SamplingParams(max_tokens=2)).result(
            timeout=TIMEOUT)
    lines = [line for line in server.log().splitlines() if "tenant=bob" in line and "[req-" in line]
    assert lines, "no operation log line names its request id and tenant"


def _start_unready(home: Path, tiny_model_dir: Path, env: dict[str, str]) -> LiveServer:
    """Start a server whose healthz may be 503 (start_server waits for 200)."""
    home.mkdir(parents=True, exist_ok=True)
    config = write_models_yaml(home / "models.yaml", tiny_model_dir)
    port = free_port()
    full_env = {**os.environ, "TUFT_HOME": str(home), "TUFT_MODEL_CONFIG": str(config),
                "DJANGO_SETTINGS_MODULE": "tuft_project.settings", "PYTHONUNBUFFERED": "1", **env}
    log_path = home / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "tuft_project.cli", "--port", str(port), "--home", str(home),
         "--model-config", str(config), "--no-dev-key"],
        env=full_env, cwd=ROOT, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
    )
    srv = LiveServer(url=f"http://127.0.0.1:{port}", home=home, env=full_env, process=process, log_path=log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{srv.log()}")
        try:
            httpx.get(f"{srv.url}/api/v1/healthz", timeout=15)
            return srv
        except httpx.HTTPError:
            time.sleep(0.5)
    srv.stop()
    raise RuntimeError(f"server did not come up:\n{srv.log()}")


def test_healthz_503_without_redis_and_metrics_access(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "TUFT_METRICS_LOOPBACK": "0", "TUFT_METRICS_TOKEN": "scrape-secret"}
    srv = _start_unready(tmp_path / "home", tiny_model_dir, env)
    try:
        r = httpx.get(f"{srv.url}/api/v1/healthz", timeout=30)
        assert r.status_code == 503
        assert set(r.json()["failing"]) == {"dispatch", "workers"} and r.json()["checks"]["database"]["ok"]
        assert httpx.get(f"{srv.url}/metrics", timeout=30).status_code == 403
        assert httpx.get(f"{srv.url}/metrics", headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 403
        samples = scrape(srv.url, {"Authorization": "Bearer scrape-secret"})
        assert value(samples, "tuft_workers_alive") == -1  # unknown while Redis is unreachable
    finally:
        srv.stop()


def test_healthz_503_when_the_database_is_gone(tmp_path: Path, tiny_model_dir: Path) -> None:
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    srv = _start_unready(tmp_path / "home", tiny_model_dir, {"DATABASE_URL": f"sqlite:///{db_dir / 'db.sqlite3'}"})
    try:
        assert httpx.get(f"{srv.url}/api/v1/healthz", timeout=30).status_code == 200
        db_dir.rename(tmp_path / "db-away")  # SQLite cannot open a file in a missing directory
        r = httpx.get(f"{srv.url}/api/v1/healthz", timeout=30)
        assert r.status_code == 503 and r.json()["failing"] == ["database"]
        (tmp_path / "db-away").rename(db_dir)
        assert httpx.get(f"{srv.url}/api/v1/healthz", timeout=30).status_code == 200
    finally:
        srv.stop()
