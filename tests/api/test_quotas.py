"""Issue #5: every quota, through the unmodified SDK against a live server.

For each limit: the request over it gets the documented error (403
``quota_exceeded``, which the SDK does not retry; or a failed future with
category "user" when the limit is checked inside an operation), one under it
works, and the usage the server recorded matches the work done.

The server here has its own SQLite database: the default quota is one
server-wide row, and setting it must not change other tests' tenants. The
tests of concurrent creates (at the end) have a PostgreSQL server of their own.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import httpx
import pytest
import tinker
from tinker import types
from tinker.types.request_error_category import RequestErrorCategory

from tests.api.helpers import post
from tests.conftest import MODEL_NAME, LiveServer, start_server, write_models_yaml

if TYPE_CHECKING:
    import psycopg

SUFFIX = secrets.token_hex(3)

# tenant -> its own quota (None: it has none and follows the default quota)
TENANTS: dict[str, dict[str, int] | None] = {
    "rank": {"max_lora_rank": 4},
    "runs": {"max_training_runs": 1},
    "samplers": {"max_sampling_sessions": 1},
    "storage": {"max_checkpoint_bytes": 80_000},
    "train-budget": {"train_tokens_per_day": 30},
    "sample-budget": {"sample_tokens_per_day": 20},
    "fresh": None,
}
DEFAULT_QUOTA = {"max_lora_rank": 2}

SETUP = """
import json
from sessions_app.actions import do_create_api_key, do_create_tenant
from sessions_app.models import DefaultQuota, Quota
DefaultQuota(**{default}).save()
keys = {{}}
for name, limits in {tenants}.items():
    tenant = do_create_tenant(name + "-{suffix}")
    if limits is not None:
        Quota.objects.create(tenant=tenant, **limits)
    keys[name] = do_create_api_key(tenant)[1]
print("KEYS=" + json.dumps(keys))
"""


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("tuft-quotas")
    saved = os.environ.pop("DATABASE_URL", None)  # an isolated SQLite database (see module docstring)
    try:
        srv = start_server(home, write_models_yaml(home / "models.yaml", tiny_model_dir))
    finally:
        if saved is not None:
            os.environ["DATABASE_URL"] = saved
    try:
        out = srv.manage("shell", "-c", SETUP.format(default=DEFAULT_QUOTA, tenants=TENANTS, suffix=SUFFIX))
        srv.keys.update(json.loads(out.split("KEYS=", 1)[1].strip().splitlines()[0]))
        yield srv
    finally:
        srv.stop()


def client(server: LiveServer, tenant: str) -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=server.url, api_key=server.keys[tenant])


def usage_today(server: LiveServer, tenant: str) -> dict[str, int]:
    """Today's usage row, as the tenant downloads it from its dashboard (API-key login, CSV)."""
    with httpx.Client(base_url=server.url, timeout=30) as web:
        web.get("/dashboard/login/")
        r = web.post("/dashboard/login/", data={
            "api_key": server.keys[tenant], "csrfmiddlewaretoken": web.cookies["csrftoken"],
        })
        assert r.status_code == 302, r.text
        r = web.get("/dashboard/usage.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) <= 1, "a tenant's CSV holds only its own rows (one day here)"
    assert all(row["tenant"] == f"{tenant}-{SUFFIX}" for row in rows)
    if not rows:
        return {}
    return {k: int(v) for k, v in rows[0].items() if k not in ("day", "tenant")}


def datum(n: int) -> types.Datum:
    tokens = [(7 * i + 3) % 1000 + 1 for i in range(n + 1)]
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": types.TensorData(data=tokens[1:], dtype="int64", shape=[n])},
    )


def assert_quota_error(exc: BaseException, *words: str) -> None:
    """A 403 from the API, or a failed future of category "user"; either way the message says why."""
    text = str(exc)
    assert "quota exceeded: " in text, text
    if isinstance(exc, tinker.RequestFailedError):
        assert exc.category == RequestErrorCategory.User
    for word in words:
        assert word in text, text


def test_max_lora_rank(quota_server: LiveServer) -> None:
    service = client(quota_server, "rank")
    with pytest.raises(tinker.PermissionDeniedError) as exc:
        service.create_lora_training_client(base_model=MODEL_NAME, rank=8).result(timeout=60)
    assert_quota_error(exc.value, "rank 8", "maximum of 4")
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=60)
    assert training.get_info().lora_rank == 4

    # On the wire: 403 with a JSON body and code (never 409/402, which the SDK retries).
    session_id = service.holder.get_session_id()
    r = post(quota_server, "create_model", quota_server.keys["rank"], {
        "session_id": session_id, "model_seq_id": 99, "base_model": MODEL_NAME, "lora_config": {"rank": 16},
    })
    assert r.status_code == 403 and r.json()["code"] == "quota_exceeded"


def test_default_quota_applies_to_a_new_tenant(quota_server: LiveServer) -> None:
    service = client(quota_server, "fresh")  # created after the default was set; no quota of its own
    with pytest.raises(tinker.PermissionDeniedError) as exc:
        service.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=60)
    assert_quota_error(exc.value, "maximum of 2")
    service.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=60)


def test_max_concurrent_training_runs(quota_server: LiveServer) -> None:
    service = client(quota_server, "runs")
    service.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=60)
    with pytest.raises(tinker.PermissionDeniedError) as exc:
        service.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=60)
    assert_quota_error(exc.value, "1 active training runs", "limit 1")
    # Ending the session releases its run, and with it the quota.
    r = post(quota_server, f"sessions/{service.holder.get_session_id()}/finish", quota_server.keys["runs"], {})
    assert r.status_code == 200
    client(quota_server, "runs").create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=60)


def test_max_sampling_sessions(quota_server: LiveServer) -> None:
    service = client(quota_server, "samplers")
    service.create_sampling_client(base_model=MODEL_NAME).result(timeout=60)
    with pytest.raises(tinker.PermissionDeniedError) as exc:
        service.create_sampling_client(base_model=MODEL_NAME).result(timeout=60)
    assert_quota_error(exc.value, "sampling sessions", "limit 1")
    # Saving weights into a new sampling client opens a sampling session too.
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=60)
    with pytest.raises(tinker.RequestFailedError) as failed:
        training.save_weights_and_get_sampling_client().result(timeout=60)
    assert_quota_error(failed.value, "sampling sessions")


def test_checkpoint_storage(quota_server: LiveServer) -> None:
    service = client(quota_server, "storage")
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=60)
    first = training.save_weights_for_sampler("first").result(timeout=60)
    rest = tinker.RestClient(base_url=quota_server.url, api_key=quota_server.keys["storage"])
    saved = rest.list_checkpoints(training.model_id).result(timeout=30).checkpoints
    size = saved[0].size_bytes
    assert len(saved) == 1 and 40_000 < size <= 80_000, "the test's limit assumes one rank-4 checkpoint of the tiny model fits, two do not"

    with pytest.raises(tinker.RequestFailedError) as exc:
        training.save_weights_for_sampler("second").result(timeout=60)
    assert_quota_error(exc.value, "80000")
    # The refused checkpoint left nothing behind: not listed, not on disk.
    assert [c.checkpoint_id for c in rest.list_checkpoints(training.model_id).result(timeout=30).checkpoints] == [
        "sampler_weights/first"]
    assert not list((quota_server.home / "checkpoints").glob(f"*/{training.model_id}/sampler_weights/second"))
    assert usage_today(quota_server, "storage")["checkpoint_bytes"] == size

    # Deleting frees the space: the next save fits again, and usage follows.
    rest.delete_checkpoint_from_tinker_path(first.path).result(timeout=30)
    assert usage_today(quota_server, "storage")["checkpoint_bytes"] == 0
    training.save_weights_for_sampler("third").result(timeout=60)
    assert usage_today(quota_server, "storage")["checkpoint_bytes"] == size


def test_daily_training_token_budget(quota_server: LiveServer) -> None:
    training = client(quota_server, "train-budget").create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=60)
    batch = [datum(12)]
    training.forward_backward(batch, "cross_entropy").result(timeout=60)  # 12 of 30
    training.optim_step(types.AdamParams(learning_rate=1e-3)).result(timeout=60)
    training.forward_backward(batch, "cross_entropy").result(timeout=60)  # 24 of 30
    with pytest.raises(tinker.RequestFailedError) as exc:  # 36 > 30
        training.forward_backward(batch, "cross_entropy").result(timeout=60)
    assert_quota_error(exc.value, "daily train token budget", "24 used + 12 requested > 30")
    # The refused step consumed its seq_id; the run goes on with what fits.
    training.forward_backward([datum(6)], "cross_entropy").result(timeout=60)  # 30 of 30
    usage = usage_today(quota_server, "train-budget")
    assert usage["training_tokens"] == 30
    # create_model, 3 forward_backward, optim_step completed; one forward_backward failed
    assert (usage["operations"], usage["failed_operations"]) == (6, 1)


def test_daily_sampling_token_budget(quota_server: LiveServer) -> None:
    sampler = client(quota_server, "sample-budget").create_sampling_client(base_model=MODEL_NAME).result(timeout=60)
    prompt = types.ModelInput.from_ints([5, 6, 7, 8])
    params = types.SamplingParams(max_tokens=6, temperature=1.0, seed=3)
    budget, used, requested = 20, 0, 4 + 6  # a request counts its prompt plus max_tokens
    prefill = sampled = 0
    for _ in range(5):
        if used + requested > budget:
            with pytest.raises(tinker.PermissionDeniedError) as exc:
                sampler.sample(prompt=prompt, num_samples=1, sampling_params=params).result(timeout=60)
            assert_quota_error(exc.value, "daily sample token budget")
            break
        result = sampler.sample(prompt=prompt, num_samples=1, sampling_params=params).result(timeout=60)
        prefill += 4
        sampled += len(result.sequences[0].tokens)
        used = prefill + sampled
    else:
        pytest.fail("the budget never refused a request")
    usage = usage_today(quota_server, "sample-budget")
    assert (usage["prefill_tokens"], usage["sampled_tokens"]) == (prefill, sampled)
    assert usage["training_tokens"] == 0


# -- concurrent creates against a count limit (PostgreSQL) ------------------------------------------
# A count limit is a count, then an insert. Two creates of one tenant that both count before
# either inserts would both pass. To make that overlap certain rather than lucky, the test holds
# the tenant's row lock itself until both creates are waiting for it, then lets them go: the
# server must count again after taking the lock, so exactly one gets through. (Without the lock
# the creates never wait, and the test fails saying so.) Row locks need PostgreSQL; SQLite
# serializes every writing transaction instead.

RACE_TENANTS: dict[str, dict[str, int] | None] = {
    "race-runs": {"max_training_runs": 1},
    "race-samplers": {"max_sampling_sessions": 1},
}
LOCK_WAIT_S = 60


@pytest.fixture(scope="module")
def pg_quota_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    from tests.api.conftest import postgres_database_or_skip

    database_url = postgres_database_or_skip()
    home = tmp_path_factory.mktemp("tuft-quotas-pg")
    srv = start_server(home, write_models_yaml(home / "models.yaml", tiny_model_dir),
                       extra_env={"DATABASE_URL": database_url})
    try:
        out = srv.manage("shell", "-c", SETUP.format(default={}, tenants=RACE_TENANTS, suffix=SUFFIX))
        srv.keys.update(json.loads(out.split("KEYS=", 1)[1].strip().splitlines()[0]))
        yield srv
    finally:
        srv.stop()


def backends_waiting_for_a_lock(watch: "psycopg.Connection") -> int:
    row = watch.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    ).fetchone()
    return int(row[0]) if row else 0


def race_two_creates(server: LiveServer, tenant: str,
                     create: Callable[[tinker.ServiceClient], Any]) -> tuple[list[Any], list[BaseException]]:
    """Start two creates of ``tenant`` while its row is locked; release it once both wait on it.

    Returns what the creates gave back: (results, errors).
    """
    import psycopg

    database_url = server.env["DATABASE_URL"]
    # Two clients, each with its session already open: only the creates run while the row is locked.
    services = [client(server, tenant) for _ in range(2)]
    for service in services:
        service.holder.get_session_id()
    futures: list[Any] = []
    with psycopg.connect(database_url, autocommit=True) as watch, psycopg.connect(database_url) as locker:
        # FOR NO KEY UPDATE: what the server's lock_tenant waits for, while the rows that merely
        # reference the tenant can still be written.
        locked = locker.execute(
            "SELECT id FROM sessions_app_tenant WHERE name = %s FOR NO KEY UPDATE", [f"{tenant}-{SUFFIX}"]
        ).fetchone()
        assert locked is not None
        try:
            futures = [create(service) for service in services]
            deadline = time.monotonic() + LOCK_WAIT_S
            while backends_waiting_for_a_lock(watch) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            waiting = backends_waiting_for_a_lock(watch)
        finally:
            locker.rollback()  # lets the creates go (and, on failure, finish before the server stops)
    results: list[Any] = []
    errors: list[BaseException] = []
    for future in futures:
        try:
            results.append(future.result(timeout=120))
        except Exception as exc:
            errors.append(exc)
    assert waiting >= 2, (
        f"after {LOCK_WAIT_S} s only {waiting} request(s) waited for the tenant's row lock: the creates "
        f"count and insert without it (results {results}, errors {errors})"
    )
    return results, errors


def test_concurrent_training_runs_cannot_pass_the_limit_together(pg_quota_server: LiveServer) -> None:
    results, errors = race_two_creates(
        pg_quota_server, "race-runs", lambda s: s.create_lora_training_client(base_model=MODEL_NAME, rank=2))
    assert len(results) == 1 and len(errors) == 1, (results, errors)
    assert isinstance(errors[0], tinker.PermissionDeniedError), errors[0]
    assert_quota_error(errors[0], "1 active training runs", "limit 1")


def test_concurrent_sampling_sessions_cannot_pass_the_limit_together(pg_quota_server: LiveServer) -> None:
    results, errors = race_two_creates(
        pg_quota_server, "race-samplers", lambda s: s.create_sampling_client(base_model=MODEL_NAME))
    assert len(results) == 1 and len(errors) == 1, (results, errors)
    assert isinstance(errors[0], tinker.PermissionDeniedError), errors[0]
    assert_quota_error(errors[0], "1 sampling sessions", "limit 1")
