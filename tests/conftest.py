"""Shared fixtures: the built-in tiny model and a live TuFT server process.

API tests drive the server exactly as users do: the unmodified ``tinker`` SDK
over HTTP against a real ``tuft`` process on 127.0.0.1 (free port, its own
data directory and SQLite database, or ``DATABASE_URL`` when set).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.manage_shell import ManageShell

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "tuft/tiny-qwen3"
# The SDK's background telemetry is noise in tests.
os.environ.setdefault("TINKER_TELEMETRY", "0")
# Live servers (child processes inherit this) sample with the HF back end unless
# their models.yaml asks for `sampler: vllm`: a vLLM engine takes minutes to start.
os.environ.setdefault("TUFT_DEFAULT_SAMPLER", "hf")
# Clients outlive the servers of earlier tests; their heartbeat threads would log
# "heartbeat failed" warnings into pytest's closed streams at exit.
logging.getLogger("tinker").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    home: Path
    env: dict[str, str]
    process: subprocess.Popen
    log_path: Path
    keys: dict[str, str] = field(default_factory=dict)
    shell: ManageShell | None = None

    def manage(self, *args: str) -> str:
        """Run a management command in this server's long-lived ``manage.py`` process; return its output."""
        if self.shell is None:
            self.shell = ManageShell(ROOT, self.env, self.home / "manage-shell.log")
        return self.shell.run(args, self.env, timeout=120)

    def create_tenant(self, name: str) -> str:
        """Create a tenant with the management command; return its API key (last output line)."""
        key = self.manage("create_tenant", name).strip().splitlines()[-1]
        self.keys[name] = key
        return key

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.shell is not None:
            self.shell.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def write_models_yaml(path: Path, model_dir: Path, max_model_len: int = 256, sampler: str | None = None) -> Path:
    path.write_text(
        "supported_models:\n"
        f"  - model_name: {MODEL_NAME}\n"
        f"    model_path: {model_dir}\n"
        f"    max_model_len: {max_model_len}\n"
        "    tensor_parallel_size: 1\n"
        f"    tokenizer_id: {model_dir}\n"  # as the quick start's models.yaml: offline get_tokenizer()
        + (f"    sampler: {sampler}\n    max_loras: 4\n    max_cpu_loras: 8\n    max_lora_rank: 16\n"
           if sampler else "")
    )
    return path


def fresh_database_url(base: str | None = None) -> str | None:
    """A new, empty PostgreSQL database when ``base`` (default DATABASE_URL) is PostgreSQL, else None.

    Every live server needs a database of its own (each migrates it and creates
    its tenants); it is dropped when the test session ends.
    """
    base = base or os.environ.get("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        return None
    import atexit
    import secrets
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = "tuft_test_" + secrets.token_hex(6)
    parts = urlsplit(base)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        try:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error:
            pass

    atexit.register(drop)
    return urlunsplit(parts._replace(path="/" + name))


START_TIMEOUT_S = 300


def start_server(home: Path, model_config: Path, extra_env: dict[str, str] | None = None,
                 port: int | None = None, manage: bool = True) -> LiveServer:
    """Start ``tuft``; pass ``port`` (and the first start's DATABASE_URL) to restart the same server.

    ``manage``: the test will run management commands (create tenants...), so start
    the ``manage.py`` process for them now, alongside the server (two cores do both at once).
    """
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {
        **os.environ,
        "TUFT_HOME": str(home),
        "TUFT_MODEL_CONFIG": str(model_config),
        "DJANGO_SETTINGS_MODULE": "tuft_project.settings",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    if "DATABASE_URL" not in (extra_env or {}):
        database_url = fresh_database_url()
        if database_url:
            env["DATABASE_URL"] = database_url
    log_path = home / "server.log"
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "tuft_project.cli", "--port", str(port), "--home", str(home),
         "--model-config", str(model_config), "--no-dev-key"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    server = LiveServer(url=f"http://127.0.0.1:{port}", home=home, env=env, process=process, log_path=log_path)
    if manage:
        server.shell = ManageShell(ROOT, env, home / "manage-shell.log")
        server.shell.start()
    # Seconds on a quiet machine; generous for one shared by several test runs.
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=2) as http:  # one client: httpx.get() builds one (~40 ms of CPU) per poll
        while time.monotonic() < deadline:
            if process.poll() is not None:
                server.stop()  # its manage.py process
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                if http.get(f"{server.url}/api/v1/healthz").status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"server did not come up in {START_TIMEOUT_S} s:\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    """One live server for the API tests, with tenants "alice" and "bob"."""
    home = tmp_path_factory.mktemp("tuft-home")
    config = write_models_yaml(home / "models.yaml", tiny_model_dir)
    srv = start_server(home, config)
    try:
        srv.create_tenant("alice")
        srv.create_tenant("bob")
        yield srv
    finally:
        srv.stop()


# Starting a vLLM engine takes minutes on a busy CPU: every vLLM test shares this one.
VLLM_START_TIMEOUT_S = 1200


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    """A live server sampling with vLLM (``sampler: vllm``), tenants "alice" and "bob", engine warm.

    Skips when vLLM is not installed (``bash scripts/install-vllm.sh``).
    """
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (bash scripts/install-vllm.sh)")
    import tinker
    from tinker import types

    home = tmp_path_factory.mktemp("tuft-vllm-home")
    srv = start_server(home, write_models_yaml(home / "models.yaml", tiny_model_dir, sampler="vllm"))
    try:
        srv.create_tenant("alice")
        srv.create_tenant("bob")
        client = tinker.ServiceClient(base_url=srv.url, api_key=srv.keys["alice"])
        sampler = client.create_sampling_client(base_model=MODEL_NAME).result(timeout=120)
        # The first sample starts the engine; later tests then see ordinary latencies.
        sampler.sample(types.ModelInput.from_ints([1, 2, 3]), 1,
                       types.SamplingParams(max_tokens=1)).result(timeout=VLLM_START_TIMEOUT_S)
        assert "samples with the vllm back end" in srv.log()
        yield srv
    finally:
        srv.stop()
    # vLLM's engine processes must not outlive the server (engine/process_reaper.py).
    import re

    found = re.search(r"vLLM engine for .* ready in .* \(processes \[([\d, ]*)\]\)", srv.log())
    assert found, "the server did not log its vLLM engine's processes"
    pids = [int(p) for p in found.group(1).split(",") if p.strip()]
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), f"vLLM processes {pids} outlived the server"


@pytest.fixture(scope="module", params=[
    "hf", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.timeout(VLLM_START_TIMEOUT_S)])])
def any_sampler_server(request: pytest.FixtureRequest) -> LiveServer:
    """Each sampling back end's live server in turn: HF, then vLLM (skipped when not installed)."""
    return request.getfixturevalue("server" if request.param == "hf" else "vllm_server")


@pytest.fixture
def service_client(server: LiveServer) -> Iterator["object"]:
    import tinker

    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    yield client


# -- running the suite on two pytest-xdist workers (scripts/test.sh: -n 2 --dist loadgroup) ----------
# Most of the suite waits on subprocesses (servers, RQ workers, lease expiry), so two workers
# overlap those waits. Each module stays on one worker, in order: its module-scoped servers and
# clusters start once and its tests may build on each other. The vLLM tests all go to one worker
# so that the shared vLLM server starts once. (xdist's own `xdist_group` marks do nothing with
# pytest 9: xdist renames items through an attribute pytest no longer reads. So the groups are
# told apart by node id, with the scheduler below.)
VLLM_GROUP = "vllm"
# The groups that take longest go out first, so that no long one is left for the end while the
# other worker idles (from the durations of a whole serial run; the others are shorter).
LONG_GROUPS_FIRST = (
    VLLM_GROUP,
    "tests/distributed/test_distributed.py",
    "tests/api/test_fuzz.py",
    "tests/distributed/test_worker_shutdown.py",
    "tests/distributed/test_worker_sampling.py",
    "tests/distributed/test_batching.py",
    "tests/distributed/test_redis_restart.py",
    "tests/api/test_rest.py",
    "tests/browser/test_dashboard.py",
    "tests/api/test_scheduling.py",
)


def suite_group(nodeid: str) -> str:
    """The vLLM group for a test of a vllm module or with a `vllm` parameter, else its module.

    By node id, as the scheduler only sees those: the tests of the `vllm` mark are named so
    (``test_vllm_*.py`` or ``[vllm]``); tests/test_suite_grouping.py fails for one named otherwise,
    which would start a second vLLM server on the other worker.
    """
    module, _, name = nodeid.partition("::")
    params = name.partition("[")[2].rstrip("]").split("-")
    return VLLM_GROUP if "vllm" in module.rpartition("/")[2] or VLLM_GROUP in params else module


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: ignored without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the order of the hook below, longest first

    class GroupScheduling(LoadScopeScheduling):
        """Whole groups to a worker, in the order of the collection."""

        def _split_scope(self, nodeid: str) -> str:
            return suite_group(nodeid)

    return GroupScheduling(config, log)


@pytest.hookimpl(trylast=True)  # after pytest's own ordering (by fixture), kept within each group
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if getattr(config.option, "loadgroup", False):  # set in an xdist worker under --dist loadgroup
        rank = {group: i for i, group in enumerate(LONG_GROUPS_FIRST)}
        items.sort(key=lambda item: rank.get(suite_group(item.nodeid), len(rank)))
