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


class CompletionHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = defaultdict(set)

    def notify(self, request_id: str) -> None:
        with self._lock:
            waiters = self._waiters.pop(request_id, set())
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the waiting request's loop has closed
                pass

    async def wait(self, request_id: str, timeout: float) -> None:
        """Return when notified or after ``timeout`` seconds, whichever is first."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters[request_id].add(entry)
        try:
            await asyncio.wait_for(entry[1].wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._lock:
                waiters = self._waiters.get(request_id)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        self._waiters.pop(request_id, None)


# The process's one hub (an explicit registry, see STYLE.md rule 12).
completion_hub = CompletionHub()
