"""Graceful shutdown of the ``tuft`` server on SIGTERM or SIGINT.

What happens (each step is logged):

1. No operation starts any more: the embedded lanes finish the operation each
   is running and stop (``EmbeddedDispatcher.stop``), waiting at most
   ``TUFT_SHUTDOWN_TIMEOUT_S`` (default 30 s).
2. Persistence is disabled in embedded mode, so nothing else survives the
   process: every unfinished future (queued, or still running after the
   timeout) fails now with a clear error, sessions close, runs are released —
   what a restart would do, but the clients waiting in ``retrieve_future`` are
   told at once instead of hanging. Operations recorded after this point stay
   pending and fail at the next start.
3. The HTTP server stops; the process exits with status 0.

In distributed mode the API process has no lanes: queued work stays with the
workers and the server stops at once. A second signal exits at once (status 1).
The whole shutdown is bounded by ``TUFT_SHUTDOWN_TIMEOUT_S`` + about 20 s.

The process ends with ``os._exit``: by then everything is committed, and a
normal interpreter exit can abort in torch's native threads ("terminate called
without an active exception", status 134) or wait on a stuck request thread.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from django.conf import settings

from dispatch.embedded import EmbeddedDispatcher
from dispatch.registry import get_dispatcher
from dispatch.completions import completion_hub
from training_app.models import Operation
from training_app.recovery import fail_unfinished

logger = logging.getLogger(__name__)

SHUTDOWN_ERROR = "the server shut down before this operation finished; resubmit it"
# How long the answers to waiting polls get to go out, and how long the HTTP
# server gets to stop, before the process exits anyway.
ANSWER_GRACE_S = 5.0
STOP_GRACE_S = 15.0


class GracefulShutdown:
    """Installed once per serving process by ``install``; owns the shutdown thread."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.started: float | None = None

    def install_handlers(self) -> None:
        # Runs on the reactor's (main) thread once it runs, replacing the
        # handlers Twisted installed (which would stop the server at once).
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.started is not None:
            logger.warning("received %s again: exiting now, without waiting", name)
            exit_process(1)
        self.started = time.monotonic()
        threading.Thread(target=self.shut_down, args=(name,), name="tuft-shutdown", daemon=True).start()

    def shut_down(self, signame: str) -> None:
        try:
            dispatcher = get_dispatcher()
            if isinstance(dispatcher, EmbeddedDispatcher):
                self.drain(dispatcher, signame)
            else:
                logger.warning("received %s: stopping the API server; queued work stays with the workers", signame)
        except Exception:  # never leave the process half-stopped
            logger.exception("graceful shutdown failed; stopping anyway")
        logger.info("stopping the HTTP server")
        self.reactor.callFromThread(self.reactor.stop)
        time.sleep(STOP_GRACE_S)
        logger.error("the HTTP server did not stop within %.0f s; exiting anyway", STOP_GRACE_S)
        exit_process(0)

    def drain(self, dispatcher: EmbeddedDispatcher, signame: str) -> None:
        timeout = float(settings.TUFT_SHUTDOWN_TIMEOUT_S)
        running = list(Operation.objects.filter(status=Operation.Status.RUNNING).values_list("request_id", "kind"))
        logger.warning("received %s: starting no more operations; waiting up to %.0f s for %d running: %s",
                       signame, timeout, len(running), ", ".join(f"{k} {r}" for r, k in running) or "none")
        if dispatcher.stop(timeout):
            logger.info("every running operation finished")
        else:
            logger.error("operation(s) still running after %.0f s; abandoning them", timeout)
        failed = fail_unfinished(SHUTDOWN_ERROR, "server shut down")
        logger.warning("%d unfinished operation(s) failed with %r", failed, SHUTDOWN_ERROR)
        # Waiting polls re-read their operation and answer it before the server stops.
        completion_hub.notify_all()
        deadline = time.monotonic() + ANSWER_GRACE_S
        while completion_hub.waited_ids() and time.monotonic() < deadline:
            time.sleep(0.05)


def install() -> GracefulShutdown:
    """Take over SIGTERM/SIGINT for the daphne server about to run in this process."""
    from twisted.internet import reactor  # daphne installed its asyncio reactor when daphne.server was imported

    graceful = GracefulShutdown(reactor)
    reactor.callWhenRunning(graceful.install_handlers)
    return graceful


def exit_process(code: int) -> None:
    logger.info("TuFT server exits with status %d", code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
