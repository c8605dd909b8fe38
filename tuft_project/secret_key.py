"""The server's Django ``SECRET_KEY``: generated once per ``TUFT_HOME``, never a constant.

The key signs download URLs (``training_app.exports``) and login sessions, so a
key anyone can know lets anyone forge them. ``TUFT_SECRET_KEY`` overrides it;
otherwise the first process to start on a ``TUFT_HOME`` (``tuft``,
``manage.py``, ``tuft_worker``) writes a random key to ``$TUFT_HOME/secret_key``
(mode 0600) and every later process of that home reads the same one.

Plain Python (no Django): settings.py imports it while Django loads settings.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

logger = logging.getLogger(__name__)

KEY_FILE = "secret_key"
# Keys that are public knowledge: the constant earlier TuFT versions fell back to,
# and the placeholders of Django's project template and of common examples.
KNOWN_KEYS = frozenset({
    "tuft-dev-insecure-change-me", "change-me", "changeme", "secret", "secret-key", "insecure", "dev",
})
MIN_LENGTH = 32


class SecretKeyError(Exception):
    """The key cannot be stored, or is too weak for a production server."""


def key_is_weak(key: str) -> bool:
    """A key that is known, a Django template key, too short, or barely varied."""
    return (key in KNOWN_KEYS or key.startswith("django-insecure-") or len(key) < MIN_LENGTH
            or len(set(key)) < 5)


def load_or_create_secret_key(home: Path) -> str:
    """The key stored in ``home``, generating it (mode 0600) on first use.

    Creation is exclusive (``O_EXCL``), so two processes starting together on a
    new home agree on one key: the loser of the race reads the winner's.
    """
    path = home / KEY_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(48)
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    except OSError as exc:
        raise SecretKeyError(f"cannot create {path} ({exc}); set TUFT_SECRET_KEY instead") from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    logger.info("generated a new secret key in %s", path)
    return key


def _read(path: Path) -> str:
    if path.stat().st_mode & 0o077:
        logger.warning("%s is readable by other users; run: chmod 600 %s", path, path)
    for _ in range(50):
        key = path.read_text().strip()
        if key:
            return key
        # Created by another process an instant ago, not yet written: wait for it.
        time.sleep(0.1)
    raise SecretKeyError(f"{path} is empty; delete it (a new key is generated) or set TUFT_SECRET_KEY")
