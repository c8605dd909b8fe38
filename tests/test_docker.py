"""The container files, without a Docker daemon: lint them, check the compose wiring, and run
the image's entry point (docker/entrypoint.sh) outside Docker, with the original README's command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install -r requirements-dev.txt)")
    out = subprocess.run([hadolint, "Dockerfile", "docker/Dockerfile.gpu"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfiles_run_non_root_with_a_data_volume_and_a_health_check() -> None:
    for path in (ROOT / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"):
        text = path.read_text()
        assert "USER 1000:1000" in text and 'VOLUME ["/data"]' in text and "TUFT_HOME=/data" in text
        assert "HEALTHCHECK" in text and "docker/healthcheck.py" in text
        assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in text
    assert os.access(ENTRYPOINT, os.X_OK)


def test_compose_wires_postgres_redis_api_and_a_worker() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "init", "api", "worker"}
    for name in ("init", "api", "worker"):
        service = services[name]
        assert service["image"] == "tuft:cpu" and "tuftdata:/data" in service["volumes"]
        env = service["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"] == "redis://redis:6379/0" and env["TUFT_HOME"] == "/data"
    assert services["init"]["build"] == "." and services["init"]["command"] == ["init"]
    assert services["api"]["command"][0] == "tuft" and services["worker"]["command"][0] == "worker"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    assert gpu["init"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert gpu["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "TUFT_MODEL_CONFIG")}
    bin_dir = str(Path(sys.executable).parent)  # `python` and `tuft` of this environment, as in the image
    return {**env, "PATH": f"{bin_dir}:{env.get('PATH', '')}", "TUFT_HOME": str(home), "TUFT_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1", **extra}


def _serve(args: list[str], env: dict[str, str], log: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(["sh", str(ENTRYPOINT), *args], cwd=log.parent, env=env, stdout=open(log, "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/healthz", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    _stop(process)
    raise AssertionError(f"server did not come up:\n{log.read_text()}")


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def _healthcheck(port: int) -> int:
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env={**os.environ, "PORT": str(port)},
                          capture_output=True, timeout=30).returncode


def test_entrypoint_quick_start_and_original_readme_command(tmp_path: Path) -> None:
    data = tmp_path / "data"  # stands for the /data volume
    init = subprocess.run(["sh", str(ENTRYPOINT), "init"], cwd=tmp_path, env=_env(data), capture_output=True,
                          text=True, timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    assert init.stdout.strip().splitlines()[-1].startswith("tml-")
    assert (data / "models.yaml").exists() and (data / "models" / "tiny-qwen3" / "config.json").exists()

    port = free_port()
    quick = _serve([], _env(data, PORT=str(port)), tmp_path / "quick.log", port)
    try:
        assert _healthcheck(port) == 0
    finally:
        _stop(quick)
    assert _healthcheck(port) == 1  # nothing listens any more

    # The original TuFT README's command, unchanged but for where /data is.
    port = free_port()
    original = ["tuft", "--port", str(port), "--checkpoint-dir", str(data / "checkpoints"),
                "--model-config", str(data / "models.yaml")]
    server = _serve(original, _env(data), tmp_path / "original.log", port)
    try:
        assert _healthcheck(port) == 0
    finally:
        _stop(server)
    assert f"checkpoints: {data / 'checkpoints'}" in (tmp_path / "original.log").read_text()


def test_entrypoint_runs_workers_and_management_commands(tmp_path: Path) -> None:
    worker = subprocess.run(["sh", str(ENTRYPOINT), "worker", "--help"], env=_env(tmp_path), capture_output=True,
                            text=True, timeout=120)
    assert worker.returncode == 0 and "--metrics-port" in worker.stdout, worker.stderr
    manage = subprocess.run(["sh", str(ENTRYPOINT), "manage", "help", "create_tenant"], env=_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert manage.returncode == 0 and "create_tenant" in manage.stdout, manage.stderr
