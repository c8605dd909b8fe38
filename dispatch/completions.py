"""Wake long-polling ``retrieve_future`` requests when their operation finishes.

Waiters are asyncio events registered by the async view; they are woken by
completion *events*, never by each waiter re-reading the database on a timer
(at 100 clients that starved the server, see docs/performance.md):

* an embedded worker thread calls ``notify`` after committing a result;
* in distributed mode RQ workers publish finished request ids on Redis and the
  API process's listener (``dispatch.distributed``) calls ``notify``, and
  ``notify_all`` after (re)subscribing, for what landed while it was away;
* one shared ``CompletionSweeper`` thread per process looks up, every few
  seconds, whether any waited-on operation finished without an event reaching
  this process (a publish that failed, a future deleted) — one query for all
  waiters, and only while someone waits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

from django.db import close_old_connections

from training_app.models import Operation

logger = logging.getLogger(__name__)


class CompletionHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = defaultdict(set)

    def notify(self, request_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(request_id, ()))
        self._wake(waiters)

    def notify_all(self) -> None:
        """Wake every waiter (each re-reads its operation once): events may have been missed."""
        with self._lock:
            waiters = [w for entries in self._waiters.values() for w in entries]
        self._wake(waiters)

    def waited_ids(self) -> list[str]:
        """Request ids somebody is waiting for right now."""
        with self._lock:
            return list(self._waiters)

    @staticmethod
    def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the waiting request's loop has closed
                pass

    @contextmanager
    def subscribe(self, request_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``request_id`` is notified, for as long as the block runs.

        Subscribe *before* reading the operation's state: a completion that lands
        between the read and the wait then still wakes the waiter.
        """
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters[request_id].add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiters = self._waiters.get(request_id)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        self._waiters.pop(request_id, None)


class CompletionSweeper:
    """One thread that wakes the waiters of operations finished without a notification.

    A safety net, not the wake-up path: every ``interval_s`` it reads the status
    of all waited-on operations in one query and notifies those that are done
    (or gone, so the poll answers 404).
    """

    CHUNK = 500  # ids per query (SQLite allows 999 parameters)

    def __init__(self, hub: CompletionHub) -> None:
        self.hub = hub
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def ensure_running(self, interval_s: float) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="tuft-completion-sweeper",
                                                daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.sweep()
            except Exception:  # a database hiccup must not end the safety net
                logger.exception("completion sweep failed; retrying in %.0f s", interval_s)
            finally:
                close_old_connections()

    def sweep(self) -> int:
        """Notify waiters whose operation is finished or gone; return how many ids were notified."""
        waited = self.hub.waited_ids()
        notified = 0
        for start in range(0, len(waited), self.CHUNK):
            chunk = waited[start:start + self.CHUNK]
            unfinished = set(Operation.objects.filter(
                request_id__in=chunk, status__in=(Operation.Status.PENDING, Operation.Status.RUNNING),
            ).values_list("request_id", flat=True))
            for request_id in chunk:
                if request_id not in unfinished:
                    self.hub.notify(request_id)
                    notified += 1
        return notified


# The process's one hub and its sweeper (explicit registries, see STYLE.md rule 12).
completion_hub = CompletionHub()
completion_sweeper = CompletionSweeper(completion_hub)
