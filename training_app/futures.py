"""Wake long-polling ``retrieve_future`` requests when their operation finishes.

Waiters are asyncio events registered by the async view; workers (other
threads) call ``notify`` after committing a result. Views also re-read the
database every second, so a result written by another process (an RQ worker)
is seen without a notification.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class CompletionHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = defaultdict(set)

    def notify(self, request_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(request_id, ()))
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


# The process's one hub (an explicit registry, see STYLE.md rule 12).
completion_hub = CompletionHub()
