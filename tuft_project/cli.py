"""The ``tuft`` command: start a TuFT server (daphne) in one step.

    tuft --port 8080 --checkpoint-dir DIR --model-config models.yaml

Order matters: it first takes the exclusive lock of ``TUFT_HOME`` and binds
the listening socket, and only then touches anything (builds the built-in tiny
model when there is no models.yaml, migrates, recovers the previous process's
state in ``tuft_project.startup``). A second ``tuft`` on the same home or port
therefore stops with a clear message before it can close the running server's
sessions, and the URL is printed only once the port is really ours. The bound
socket is handed to daphne (``--fd``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tuft",
        description="Serve the Tinker fine-tuning API (LoRA training and sampling) for many tenants.",
        epilog="SIGTERM/SIGINT: start no new operation, let running ones finish (at most "
               "$TUFT_SHUTDOWN_TIMEOUT_S, default 30 s), fail queued ones with a clear error, exit 0.",
    )
    p.add_argument("--host", default=os.environ.get("TUFT_HOST", "127.0.0.1"),
                   help="interface to bind (default $TUFT_HOST or 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--checkpoint-dir", help="where checkpoints are written (default $TUFT_HOME/checkpoints)")
    p.add_argument(
        "--model-config",
        help="models.yaml listing supported_models (default $TUFT_HOME/models.yaml, created with the built-in tiny model)",
    )
    p.add_argument("--home", help="data directory: database, keys, built-in model (default $TUFT_HOME or ./var); "
                   "one server per home")
    p.add_argument("--no-dev-key", action="store_true", help="do not create or print the dev tenant's API key")
    return p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (OSError when it is taken or not ours)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As daphne itself would: a restart may reuse a port with connections in TIME_WAIT
    # (on Linux this never lets two servers listen on one port).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.home:
        os.environ["TUFT_HOME"] = str(Path(args.home).expanduser().resolve())
    if args.checkpoint_dir:
        os.environ["TUFT_CHECKPOINT_DIR"] = str(Path(args.checkpoint_dir).expanduser().resolve())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tuft_project.settings")
    # Read by settings.ALLOWED_HOSTS: the address we serve is a host name we answer to.
    os.environ["TUFT_BIND_HOST"] = args.host

    import django
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    if args.model_config:
        os.environ["TUFT_MODEL_CONFIG"] = str(Path(args.model_config).expanduser().resolve())
    try:
        django.setup()
    except ImproperlyConfigured as exc:
        print(f"tuft: error: {exc}", file=sys.stderr)
        return 2

    # The project's modules below read django.conf.settings: imported after django.setup().
    from tuft_project.home_lock import HomeLocked, lock_home
    from tuft_project.secret_key import key_is_weak

    try:
        lock_home(settings.TUFT_HOME)
    except HomeLocked as exc:
        print(f"tuft: error: {exc}", file=sys.stderr)
        return 1
    if not is_loopback(args.host) and key_is_weak(settings.SECRET_KEY):
        # Reachable from other machines counts as production (docs/operators.md).
        print(f"tuft: error: refusing to serve on {args.host} with a well-known or weak TUFT_SECRET_KEY; "
              "unset it to use the generated key, or set a random one of at least 32 characters", file=sys.stderr)
        return 2
    try:
        listener = bind_listener(args.host, args.port)
    except OSError as exc:
        print(f"tuft: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    port = int(listener.getsockname()[1])

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
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{f'[{shown_host}]' if ':' in shown_host else shown_host}:{port}"
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
    if listener.family == socket.AF_INET:
        bind = ["--fd", str(listener.fileno())]
    else:
        # daphne's fd endpoint adopts IPv4 sockets only. Load the app (which runs
        # start-up recovery) while we still hold the port, then let daphne bind it.
        import tuft_project.asgi  # noqa: F401

        listener.close()
        bind = ["--bind", args.host, "--port", str(port)]
    CommandLineInterface().run([*bind, "tuft_project.asgi:application"])
    shutdown.exit_process(0 if graceful.started is not None else 1)  # daphne stopped on its own: it failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
