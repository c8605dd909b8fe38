"""First-run setup shared by ``tuft`` and ``manage.py quickstart``.

Builds the built-in tiny model and a models.yaml pointing at it (if absent),
migrates the database and makes sure a ``dev`` tenant with a key exists.
"""

from __future__ import annotations

from pathlib import Path

# Imported after django.setup() (tuft_project.cli, manage.py quickstart): models may be imported here.
from engine.tiny_model import build_tiny_model  # torch is imported only when a model is built
from sessions_app.actions import do_create_api_key, do_create_tenant
from sessions_app.authentication import tenant_for_key
from sessions_app.models import Tenant

DEFAULT_MODEL_NAME = "tuft/tiny-qwen3"


def ensure_default_model_config(home: Path) -> Path:
    config = home / "models.yaml"
    if config.exists():
        return config
    model_dir = home / "models" / "tiny-qwen3"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir)
    home.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "# Made by TuFT's quick start: the built-in tiny model (random weights).\n"
        "supported_models:\n"
        f"  - model_name: {DEFAULT_MODEL_NAME}\n"
        f"    model_path: {model_dir}\n"
        "    max_model_len: 2048\n"
        "    tensor_parallel_size: 1\n"
        "    # The tokenizer directory on this machine: get_tokenizer() works offline for local clients.\n"
        f"    tokenizer_id: {model_dir}\n"
    )
    return config


def ensure_dev_key(key_file: Path) -> str:
    """The dev tenant's key, created once and kept in ``key_file`` (mode 600)."""
    if key_file.exists():
        raw = key_file.read_text().strip()
        if tenant_for_key(raw) is not None:
            return raw
    tenant = Tenant.objects.filter(name="dev").first() or do_create_tenant("dev")
    _, raw = do_create_api_key(tenant, label="quickstart")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(raw + "\n")
    key_file.chmod(0o600)
    return raw
