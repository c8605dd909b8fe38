"""A live server per database, for the tests that must pass on SQLite *and* PostgreSQL.

``db_server`` is parametrized over both, whatever ``DATABASE_URL`` says: the
hostile-input and fuzz tests run twice in the default test command. The
PostgreSQL run uses ``DATABASE_URL`` when it is PostgreSQL, else the local
server at 127.0.0.1:5432 (user postgres), and skips (saying why) only when no
PostgreSQL answers there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import LiveServer, fresh_database_url, start_server, write_models_yaml

LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"

# Small enough that tests can cross them cheaply; far above what normal flows use.
LIMITS_ENV = {
    "TUFT_MAX_FWDBWD_TOKENS": "4096",
    "TUFT_MAX_FWDBWD_TENSOR_ELEMENTS": "65536",
    "TUFT_MAX_BODY_BYTES": str(2 * 1024 * 1024),
}
# tenant -> its own quota (None: no Quota row, the settings apply)
TENANTS: dict[str, dict[str, int] | None] = {
    "alice": None,
    "bob": None,
    # Bounds the real work the fuzzer's valid-looking requests can queue.
    "fuzz": {"max_num_samples": 4, "max_fwdbwd_tokens": 256, "max_training_runs": 20, "max_sampling_sessions": 20},
    "roomy": {"max_num_samples": 200, "max_fwdbwd_tokens": 8192},
    "tight": {"max_num_samples": 2, "max_fwdbwd_tokens": 8},
}
SETUP = """
import json
from sessions_app.actions import do_create_api_key, do_create_tenant
from sessions_app.models import Quota
keys = {{}}
for name, limits in {tenants}.items():
    tenant = do_create_tenant(name)
    if limits is not None:
        Quota.objects.create(tenant=tenant, **limits)
    keys[name] = do_create_api_key(tenant)[1]
print("KEYS=" + json.dumps(keys))
"""


@dataclass
class DbServer:
    server: LiveServer
    database: str  # "sqlite" | "postgresql"

    @property
    def pid(self) -> int:
        return int(self.server.process.pid)


def postgres_database_or_skip() -> str:
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        base = LOCAL_POSTGRES
    try:
        import psycopg

        with psycopg.connect(base, connect_timeout=5):
            pass
    except Exception as exc:  # any failure to reach it: the PostgreSQL run cannot happen here
        pytest.skip(f"PostgreSQL is not reachable at {base} ({type(exc).__name__}: {exc})")
    url = fresh_database_url(base)
    assert url is not None
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def db_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              tiny_model_dir: Path) -> Iterator[DbServer]:
    """A live server on the given database with the ``TENANTS`` above (keys in ``server.keys``)."""
    database = str(request.param)
    home = tmp_path_factory.mktemp(f"tuft-{database}")
    if database == "sqlite":
        env = {"DATABASE_URL": f"sqlite:///{home / 'db.sqlite3'}"}
    else:
        env = {"DATABASE_URL": postgres_database_or_skip()}
    srv = start_server(home, write_models_yaml(home / "models.yaml", tiny_model_dir), extra_env={**env, **LIMITS_ENV})
    try:
        out = srv.manage("shell", "-c", SETUP.format(tenants=repr(TENANTS)))
        srv.keys.update(json.loads(out.split("KEYS=", 1)[1].strip().splitlines()[0]))
        yield DbServer(srv, database)
    finally:
        srv.stop()
