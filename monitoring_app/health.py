"""What ``/api/v1/healthz`` checks: a list of named checks, each answering ok or what is wrong.

Add a check by appending a function to ``CHECKS``; the endpoint answers 503
naming every failing one. Each check must be quick and bounded (the Redis
client has 3-5 s socket timeouts) and must not raise. Details are public (the
endpoint needs no key): name the failing part, log the exception.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from django.db import connection

from dispatch import queues
from dispatch.registry import get_dispatcher, is_distributed

logger = logging.getLogger(__name__)

# The embedded dispatcher's lanes are threads with these names (dispatch.embedded).
EMBEDDED_LANE_THREADS = ("tuft-train", "tuft-sample")


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def check_database() -> CheckResult:
    # A fresh connection: a kept one (CONN_MAX_AGE) can go on working on SQLite after
    # the database file became unreachable, while every new connection fails.
    connection.close()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return CheckResult("database", True, connection.vendor)
    except Exception as exc:  # any driver error means "down"
        logger.warning("health: database check failed: %s", exc)
        return CheckResult("database", False, f"{connection.vendor} unreachable ({type(exc).__name__})")


def check_dispatch() -> CheckResult:
    if not is_distributed():
        return CheckResult("dispatch", True, "embedded worker threads")
    try:
        queues.connection().ping()
        return CheckResult("dispatch", True, "redis")
    except Exception as exc:
        logger.warning("health: redis check failed: %s", exc)
        return CheckResult("dispatch", False, f"redis unreachable ({type(exc).__name__})")


def alive_workers() -> int | None:
    """Workers (distributed) or lanes (embedded) alive now; None if that cannot be known (Redis down)."""
    if not is_distributed():
        return sum(1 for t in threading.enumerate() if t.name in EMBEDDED_LANE_THREADS and t.is_alive())
    backend = queues.get_backend()
    assert backend is not None
    try:
        # Each live tuft_worker renews this key (with a TTL) while it runs (workers.runtime).
        return sum(1 for _ in queues.connection().scan_iter(match=backend.key("alive", "*"), count=100))
    except Exception:
        return None


def check_workers() -> CheckResult:
    alive = alive_workers()
    if alive is None:
        return CheckResult("workers", False, "cannot list workers (redis unreachable)")
    if not is_distributed():
        # The dispatcher knows its own lane threads (a lane catches every error, so a
        # dead one is a bug worth a restart: never report "ok" with training dead).
        if not get_dispatcher().healthy():  # type: ignore[attr-defined]
            return CheckResult("workers", False, "an embedded worker lane is not running")
        return CheckResult("workers", True, f"{alive} of {len(EMBEDDED_LANE_THREADS)} embedded lanes alive")
    return CheckResult("workers", alive > 0, f"{alive} tuft_worker processes alive")


CHECKS: list[Callable[[], CheckResult]] = [check_database, check_dispatch, check_workers]


def run_checks() -> list[CheckResult]:
    return [check() for check in CHECKS]
