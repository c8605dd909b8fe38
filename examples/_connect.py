"""Where the examples find the server and a key (shared by sl_loop.py and rl_loop.py).

--base-url (default $TINKER_BASE_URL or http://127.0.0.1:8080) and --api-key
(default $TINKER_API_KEY, else the key ``tuft`` printed at start-up, kept in
$TUFT_HOME/dev-api-key, ./var/dev-api-key by default).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import tinker


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default=os.environ.get("TINKER_BASE_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("TINKER_API_KEY"))
    parser.add_argument("--base-model", help="default: the server's first model")


def connect(args: argparse.Namespace) -> tuple[tinker.ServiceClient, str]:
    """A ServiceClient and the base model to train."""
    key = args.api_key
    if not key:
        home = Path(os.environ.get("TUFT_HOME", Path(__file__).resolve().parent.parent / "var"))
        key_file = home / "dev-api-key"
        if not key_file.exists():
            raise SystemExit(f"no --api-key, no $TINKER_API_KEY and no {key_file}: start `tuft` first")
        key = key_file.read_text().strip()
    rest = tinker.RestClient(base_url=args.base_url, api_key=key)
    base_model = args.base_model or rest.get_server_capabilities().result().supported_models[0].model_name
    return tinker.ServiceClient(base_url=args.base_url, api_key=key), base_model
