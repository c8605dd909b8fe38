"""Packaging: the `tuft` command and extras of `pip install .`, and the public `tuft` package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT


def _requirements(name: str) -> set[str]:
    lines = (ROOT / name).read_text().splitlines()
    reqs = {re.sub(r"\s+#.*$", "", line).strip() for line in lines}
    return {r for r in reqs if r and not r.startswith(("#", "-r"))}


def test_extras_match_the_requirement_files() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras["dev"]) == _requirements("requirements-dev.txt")
    assert set(extras["backend"]) == _requirements("requirements-gpu.txt")
    base = _requirements("requirements.txt")
    assert set(extras["persistence"]) <= base
    assert {r.split(">")[0].split("=")[0] for r in extras["persistence"]} >= {"redis", "rq", "django-rq"}


def test_original_readme_python_api() -> None:
    from tuft.persistence import PersistenceConfig

    disabled = PersistenceConfig.disabled()
    redis = PersistenceConfig.from_redis_url("redis://localhost:6379/0")
    assert disabled.mode == "disabled"
    assert (redis.mode, redis.redis_url, redis.namespace) == ("redis_url", "redis://localhost:6379/0", "tuft")


def test_config_round_trips_through_models_yaml(tmp_path: Path) -> None:
    from tuft import ModelConfig, PersistenceConfig, TuftConfig, load_config

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    config = TuftConfig(models=[ModelConfig(model_name="org/m", model_path=str(model_dir), max_model_len=512)],
                        persistence=PersistenceConfig.from_redis_url("redis://localhost:6379/0", namespace="x"))
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config.as_dict(), sort_keys=False))
    assert load_config(path) == config


def test_importing_tuft_loads_neither_django_nor_torch() -> None:
    code = "import sys, tuft, tuft.config, tuft.persistence; print('django' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "build", "*.egg-info", "__pycache__", ".pytest_cache", "bench", "node_modules"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    return next((tmp_path / "dist").glob("tuft-*.whl"))


def test_wheel_has_the_command_the_extras_and_every_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = next(zf.read(n).decode() for n in names if n.endswith("/METADATA"))
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("/entry_points.txt"))
    for module in ("tuft/persistence.py", "tuft/config.py", "tuft_project/cli.py", "openai_app/views.py",
                   "monitoring_app/health.py", "engine/runtime.py", "dashboard_app/views.py"):
        assert module in names, module
    assert not any(n.startswith("tests/") for n in names)
    assert "tuft = tuft_project.cli:main" in entry_points
    for extra in ("dev", "backend", "persistence"):
        assert f"Provides-Extra: {extra}" in meta
    # Every dashboard template and static file travels as a data file (pyproject's data-files
    # lists directories one by one, so a new sub-directory must be added there).
    data = {n.split("/data/share/tuft/", 1)[1] for n in names if "/data/share/tuft/" in n}
    tree = {str(f.relative_to(ROOT)) for d in ("templates", "static") for f in (ROOT / d).rglob("*") if f.is_file()}
    assert tree and tree <= data, sorted(tree - data)


def test_installed_wheel_renders_the_dashboard_outside_a_checkout(wheel: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip uninstalls this environment's own (editable) tuft first.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed",
                    "--prefix", str(prefix), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    code = """
import django, tuft_project
from django.conf import settings
from django.contrib.staticfiles import finders
from django.template.loader import get_template
django.setup()
print(tuft_project.__file__)
print(settings.SHARE_DIR)
print(len(get_template("dashboard/base.html").render({})) > 0)
print(finders.find("vendor/uplot/uPlot.iife.min.js"))
print(settings.TUFT_HOME)
"""
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUFT_", "DJANGO_", "DATABASE_URL"))}
    env.update(PYTHONPATH=str(site), DJANGO_SETTINGS_MODULE="tuft_project.settings")
    out = subprocess.run([sys.executable, "-c", code], cwd=run_dir, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    module, share, rendered, uplot, home = out.stdout.split()
    assert Path(module).is_relative_to(site)  # the installed copy, not this checkout
    assert Path(share) == prefix / "share" / "tuft"
    assert rendered == "True"
    assert Path(uplot).is_relative_to(prefix)
    assert Path(home) == (run_dir / "var").resolve()  # ./var, as `tuft --help` says
