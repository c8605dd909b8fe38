"""A distributed TuFT deployment made of real processes, for tests and benchmarks.

One API server (``tuft``) and any number of ``manage.py tuft_worker``
processes sharing a database (a fresh PostgreSQL database when the server at
127.0.0.1:5432 answers, else one SQLite file), a checkpoint directory and a
Redis namespace. Processes can be killed (SIGKILL) and started again on the
same port, database and namespace, as the restart and fault tests need.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import MODEL_NAME, ROOT, START_TIMEOUT_S, free_port
from tests.manage_shell import ManageShell

# Short leases so that a killed worker's work is taken over within seconds, but not
# so short that a live worker on a loaded 2-core machine misses its renewals (every
# lease/3 s) and loses its runs: that is harmless but wastes work and slows tests.
FAST_RECOVERY_ENV = {"TUFT_WORKER_LEASE_S": "10", "TUFT_REQUEUE_AFTER_S": "12", "TUFT_LONG_POLL_S": "5"}


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def redis_reachable(url: str = "redis://127.0.0.1:6379/0") -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def postgres_database() -> str | None:
    """A fresh PostgreSQL database URL if PostgreSQL is reachable, else None (SQLite)."""
    from tests.conftest import fresh_database_url

    base = os.environ.get("DATABASE_URL", "")
    if base.startswith(("postgres://", "postgresql://")):
        return fresh_database_url()
    if os.environ.get("TUFT_TEST_DISTRIBUTED_DB") == "sqlite" or not port_open("127.0.0.1", 5432):
        return None
    try:
        return fresh_database_url("postgres://postgres@127.0.0.1:5432/postgres")
    except Exception:  # reachable but unusable (auth...): SQLite still exercises the design
        return None


class PrivateRedis:
    """A redis-server of our own on a free port, which a test may stop and start."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=open(self.workdir / "redis.log", "ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not redis_reachable(self.url):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"private redis-server did not start on port {self.port}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Like a crash of a Redis that keeps nothing on disk: every queue and key is lost."""
        if self.process is not None and self.process.poll() is None:
            subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True, timeout=10)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass
class Cluster:
    home: Path
    model_dir: Path
    redis_url: str
    persistence: str = "redis_url"  # or "disabled" (REDIS_URL in the environment)
    extra_env: dict[str, str] = field(default_factory=dict)
    namespace: str = field(default_factory=lambda: "t" + secrets.token_hex(4))
    port: int = field(default_factory=free_port)
    database_url: str | None = None
    api: subprocess.Popen | None = None
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    # vLLM's adapter slots, small as in tests/conftest.py; which sampler a worker uses
    # comes from its TUFT_DEFAULT_SAMPLER (models.yaml names none).
    vllm_limits: bool = False
    shell: ManageShell | None = None

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.models_yaml = self.home / "models.yaml"
        text = (f"supported_models:\n  - model_name: {MODEL_NAME}\n    model_path: {self.model_dir}\n"
                "    max_model_len: 256\n")
        if self.vllm_limits:
            text += "    max_loras: 4\n    max_cpu_loras: 8\n    max_lora_rank: 16\n"
        if self.persistence == "redis_url":
            text += f"persistence:\n  mode: redis_url\n  redis_url: {self.redis_url}\n  namespace: {self.namespace}\n"
        self.models_yaml.write_text(text)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            **os.environ,
            "TUFT_HOME": str(self.home),
            "TUFT_MODEL_CONFIG": str(self.models_yaml),
            "DJANGO_SETTINGS_MODULE": "tuft_project.settings",
            "PYTHONUNBUFFERED": "1",
            **FAST_RECOVERY_ENV,
            **self.extra_env,
            **(extra or {}),
        }
        env.pop("DATABASE_URL", None)
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        if self.persistence != "redis_url":
            env["REDIS_URL"] = self.redis_url
            env["TUFT_REDIS_NAMESPACE"] = self.namespace
        return env

    # -- processes -----------------------------------------------------------

    def start_api(self) -> None:
        log = open(self.home / "api.log", "ab")
        self.api = subprocess.Popen(
            [sys.executable, "-m", "tuft_project.cli", "--port", str(self.port), "--home", str(self.home),
             "--model-config", str(self.models_yaml), "--no-dev-key"],
            env=self.env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(timeout=10) as http:  # one client: httpx.get() builds one (~40 ms of CPU) per poll
            while time.monotonic() < deadline:
                if self.api.poll() is not None:
                    raise RuntimeError(f"API exited with {self.api.returncode}:\n{self.log('api')}")
                try:
                    # Up, even if no worker is alive yet (healthz then answers 503 naming only "workers").
                    health = http.get(f"{self.url}/api/v1/healthz")
                    if health.status_code == 200 or health.json().get("failing") == ["workers"]:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
        raise RuntimeError(f"API did not come up:\n{self.log('api')}")

    def kill_api(self) -> None:
        assert self.api is not None
        self.api.send_signal(signal.SIGKILL)
        self.api.wait(timeout=30)

    def worker_id(self, name: str) -> str:
        """RQ worker names are global to a Redis database: make ours unique to this deployment."""
        return f"{name}-{self.namespace}"

    def start_worker(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        log = open(self.home / f"worker-{name}.log", "ab")
        self.workers[name] = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "tuft_worker", "--name", self.worker_id(name)],
            env=self.env(extra_env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )

    def wait_workers(self, *names: str, timeout: float = 120) -> None:
        """Until each named worker is registered and alive (its models loaded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in names:
                if self.workers[name].poll() is not None:
                    raise RuntimeError(f"worker {name} exited:\n{self.log('worker-' + name)}")
            if all(self.redis().exists(f"{self.namespace}:alive:{self.worker_id(name)}") for name in names):
                return
            time.sleep(0.5)
        raise RuntimeError(f"workers {names} did not come up")

    def kill_worker(self, name: str) -> None:
        process = self.workers.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def kill_pid(self, pid: int) -> str:
        """SIGKILL the worker with this pid; return its name."""
        for name, process in list(self.workers.items()):
            if process.pid == pid:
                self.kill_worker(name)
                return name
        raise AssertionError(f"no worker with pid {pid}")

    def stop(self) -> None:
        if self.shell is not None:
            self.shell.close()
            self.shell = None
        for process in [self.api, *self.workers.values()]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [self.api, *self.workers.values()]:
            if process is not None:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
        self.workers.clear()
        self._clear_redis()

    def redis(self):  # -> redis.Redis
        import redis

        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=2)

    def _clear_redis(self) -> None:
        import redis

        try:
            conn = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1)
            ns = self.namespace.encode()
            doomed = [k for pattern in (f"{self.namespace}:*", f"rq:*{self.namespace}*")
                      for k in conn.scan_iter(pattern, count=500)]
            # Jobs and executions a SIGKILLed worker left behind (their queues are gone now).
            for key in conn.scan_iter("rq:job:*", count=500):
                if ns in (conn.hget(key, "origin") or b""):
                    doomed += [key, b"rq:executions:" + key.split(b":", 2)[2]]
            if doomed:
                conn.delete(*doomed)
            for registry in (b"rq:queues", b"rq:workers"):
                members = [m for m in conn.smembers(registry) if ns in m]
                if members:
                    conn.srem(registry, *members)
        except redis.RedisError:
            pass

    # -- management commands and logs ---------------------------------------------

    def manage(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run a management command: in the deployment's long-lived ``manage.py`` process
        (tests/manage_shell.py), or in a process of its own when ``env`` adds variables."""
        if env is None:
            if self.shell is None:
                self.shell = ManageShell(ROOT, self.env(), self.home / "manage-shell.log")
            return self.shell.run(args, self.env(), timeout=120)
        out = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=self.env(env), cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def create_tenant(self, name: str) -> str:
        self.keys[name] = self.manage("create_tenant", name).strip().splitlines()[-1]
        return self.keys[name]

    def queues(self) -> dict:
        return json.loads(self.manage("tuft_queues", "--json").strip().splitlines()[-1])

    def sql_rows(self, query: str, *params: object) -> list[tuple]:
        """Run a read-only query on the deployment's database (``%s`` placeholders)."""
        if self.database_url:
            import psycopg

            with psycopg.connect(self.database_url) as conn:
                return [tuple(row) for row in conn.execute(query, params).fetchall()]
        import sqlite3

        with sqlite3.connect(self.home / "db.sqlite3", timeout=30) as conn:
            return [tuple(row) for row in conn.execute(query.replace("%s", "?"), params).fetchall()]

    def wait_sql_count(self, query: str, at_least: int, *params: object, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sql_rows(query, *params)[0][0] >= at_least:
                return
            time.sleep(0.1)
        raise AssertionError(f"{query} stayed below {at_least}\n{self.logs()}")

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"==== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.home.glob("*.log")))


def wait_for_file(path: Path, timeout: float, cluster: Cluster | None = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.1)
    raise AssertionError(f"{path} did not appear in {timeout}s\n{cluster.logs() if cluster else ''}")


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None
