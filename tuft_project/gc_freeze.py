"""Keep the garbage collector's full passes short in a serving process.

Why (docs/performance.md, "Control plane under 100 concurrent clients"):
CPython's full (generation 2) collection walks every object it tracks while
holding the GIL. A server with Django, torch, transformers, peft and a model
loaded tracks about half a million, nearly all created once (functions,
classes, the model's layers) and alive for good. Under 100 SDK clients a full
pass ran every 10-15 s and took 0.3-0.6 s, during which no other thread ran
(the event loop included): that was the tail of the ready-result latency.

``gc.freeze()`` moves every object alive at that moment into a permanent
generation that later collections do not walk (reference counting still frees
them). A serving process freezes once its start-up is over, again after each large
load (a base model, a sampler) and whenever the training runs created have
grown by a quarter (``engine.runtime.Engine``: each run's adapter is ~1,000
objects; 100 runs' adapters made full passes 3x longer), each time right after
a full collection, so that no garbage is frozen. Later full passes walk only
what was created since.

The price: an object frozen while alive that later becomes unreachable only
through a reference cycle is never reclaimed. At these points nearly all that
is alive lives as long as the process (imports, the model) or is freed by
reference counting (a released run's adapter, gradients and optimizer state sit
in no cycle: tests/engine/test_training.py); what may leak is the cyclic part
of the few requests in flight at each freeze, a few hundred KB at most, and the
freezes are few (20 by 1,000 runs).

Only processes that call ``enable()`` (the server and ``manage.py tuft_worker``, at start-up) freeze: a test
process or a ``manage.py`` command that loads an engine keeps the collector's
default behaviour.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_enabled = False


def enable(what: str = "start-up") -> None:
    """From now on this process freezes its long-lived objects; freeze those of ``what`` now."""
    global _enabled
    _enabled = True
    freeze_long_lived(what)


def freeze_long_lived(what: str) -> None:
    """Collect, then freeze everything alive (no-op unless ``enable()`` was called)."""
    if not _enabled:
        return
    with _lock:  # two loads finishing at once: one collection each, not interleaved
        started = time.monotonic()
        gc.collect()
        gc.freeze()
        logger.info("gc: froze %d long-lived objects after %s (%.0f ms)", gc.get_freeze_count(), what,
                    (time.monotonic() - started) * 1000)
