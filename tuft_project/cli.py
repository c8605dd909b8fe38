"""The ``tuft`` command: start a TuFT server (daphne) in one step.

    tuft --port 8080 --checkpoint-dir DIR --model-config models.yaml

Without --model-config (and no $TUFT_HOME/models.yaml) it builds the built-in
tiny model first. It migrates the database, prints the URL and a dev API key,
then serves the Tinker API, the admin and the dashboard.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tuft",
        description="Serve the Tinker fine-tuning API (LoRA training and sampling) for many tenants.",
        epilog="SIGTERM/SIGINT: start no new operation, let running ones finish (at most "
               "$TUFT_SHUTDOWN_TIMEOUT_S, default 30 s), fail queued ones with a clear error, exit 0.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--checkpoint-dir", help="where checkpoints are written (default $TUFT_HOME/checkpoints)")
    p.add_argument(
        "--model-config",
        help="models.yaml listing supported_models (default $TUFT_HOME/models.yaml, created with the built-in tiny model)",
    )
    p.add_argument("--home", help="data directory: database, keys, built-in model (default $TUFT_HOME or ./var)")
    p.add_argument("--no-dev-key", action="store_true", help="do not create or print the dev tenant's API key")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.home:
        os.environ["TUFT_HOME"] = str(Path(args.home).expanduser().resolve())
    if args.checkpoint_dir:
        os.environ["TUFT_CHECKPOINT_DIR"] = str(Path(args.checkpoint_dir).expanduser().resolve())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tuft_project.settings")

    import django
    from django.conf import settings

    if args.model_config:
        os.environ["TUFT_MODEL_CONFIG"] = str(Path(args.model_config).expanduser().resolve())
    django.setup()

    from tuft_project.model_config import ConfigError, load_config
    from tuft_project.quickstart import ensure_default_model_config, ensure_dev_key

    if not args.model_config and not settings.TUFT_MODEL_CONFIG.exists():
        print(f"no model config yet: building the built-in tiny model in {settings.TUFT_HOME}", flush=True)
        ensure_default_model_config(settings.TUFT_HOME)
    try:
        config = load_config(settings.TUFT_MODEL_CONFIG)
    except ConfigError as exc:
        print(f"tuft: error: {exc}", file=sys.stderr)
        return 2

    from django.core.management import call_command

    settings.TUFT_HOME.mkdir(parents=True, exist_ok=True)
    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    print(f"TuFT serving {', '.join(m.model_name for m in config.models)} at {url}", flush=True)
    print(f"  checkpoints: {settings.TUFT_CHECKPOINT_DIR}", flush=True)
    print(f"  admin: {url}/admin/  (create a login with: python manage.py createsuperuser)", flush=True)
    print(f"  dashboard: {url}/dashboard/  (staff, or a tenant signing in with its API key)", flush=True)
    if not args.no_dev_key:
        key = ensure_dev_key(settings.TUFT_HOME / "dev-api-key")
        print(f"  dev API key: {key}", flush=True)

    from daphne.cli import CommandLineInterface

    from tuft_project import shutdown

    graceful = shutdown.install()  # SIGTERM/SIGINT: finish running work, then exit 0 (tuft_project.shutdown)
    CommandLineInterface().run(["--bind", args.host, "--port", str(args.port), "tuft_project.asgi:application"])
    shutdown.exit_process(0 if graceful.started is not None else 1)  # daphne stopped on its own: it failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
