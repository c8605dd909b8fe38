"""One serving process per ``TUFT_HOME``: an exclusive lock taken before anything else.

Start-up recovery (``training_app.recovery``) fails the previous process's
unfinished futures and closes its sessions. Run by a second server on a home
that is still being served, it would break the live server's clients, so a
server takes ``$TUFT_HOME/tuft.lock`` (``flock``, released by the kernel when
the process exits, however it exits) before it migrates or recovers, and a
second one stops with a clear message instead.

Workers (``tuft_worker``) and ``manage.py`` commands share the home and do not
take the lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE = "tuft.lock"
# The locks this process holds (home → open descriptor): kept open for the
# process's lifetime, and so that taking the same lock twice is a no-op.
_HELD: dict[Path, int] = {}


class HomeLocked(Exception):
    """Another live process is serving this TUFT_HOME (not recoverable: stop that one first)."""


def lock_home(home: Path) -> None:
    """Take the exclusive serving lock of ``home`` for this process, or raise HomeLocked."""
    home = Path(home).resolve()
    if home in _HELD:
        return
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise HomeLocked(
            f"another TuFT server (pid {holder}) is already serving {home}; "
            "stop it first, or give this one its own --home"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[home] = fd
    logger.debug("locked %s", home / LOCK_FILE)
