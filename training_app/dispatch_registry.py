"""The process's dispatcher, chosen from settings on first use.

Embedded (default): worker threads in this process own the ``Engine``.
Distributed (``REDIS_URL`` set): operations go to RQ queues (issue #4 work).
"""

from __future__ import annotations

import logging
import threading

from training_app.dispatch import Dispatcher, EmbeddedDispatcher

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_dispatcher: Dispatcher | None = None


def get_dispatcher() -> Dispatcher:
    global _dispatcher
    with _lock:
        if _dispatcher is None:
            _dispatcher = _build()
        return _dispatcher


def _build() -> Dispatcher:
    from training_app.jobs import EngineExecutor

    executor = EngineExecutor()
    logger.info("using the embedded worker (no REDIS_URL)")
    return EmbeddedDispatcher(executor.execute, executor.release_run)
