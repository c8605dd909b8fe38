"""The process's dispatcher, chosen from the configuration on first use.

Embedded (default): worker threads in this process own the ``Engine``.
Distributed (models.yaml ``persistence.mode: redis_url`` or ``REDIS_URL``):
operations go to django-rq queues drained by ``manage.py tuft_worker``
processes (dispatch.distributed); this process never loads a model.
"""

from __future__ import annotations

import logging
import threading

from dispatch.distributed import RQDispatcher
from dispatch.embedded import Dispatcher, EmbeddedDispatcher
from dispatch.queues import get_backend
from training_app.ready_results import ready_results
from workers.executor import EngineExecutor

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_dispatcher: Dispatcher | None = None


def get_dispatcher() -> Dispatcher:
    global _dispatcher
    with _lock:
        if _dispatcher is None:
            _dispatcher = _build()
        return _dispatcher


def is_distributed() -> bool:
    return get_backend() is not None


def _build() -> Dispatcher:
    backend = get_backend()
    if backend is not None:
        return RQDispatcher(backend)
    executor = EngineExecutor()
    logger.info("using the embedded worker (no REDIS_URL or persistence.redis_url)")
    ready_results.enabled = True  # this process's lanes finish every operation: keep their answers
    return EmbeddedDispatcher(executor)
