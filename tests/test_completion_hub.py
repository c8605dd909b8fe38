"""The long-poll wake-up is never lost, even when completion lands before the wait starts."""

from __future__ import annotations

import asyncio
import threading

from training_app.futures import CompletionHub


def run(coro_fn):  # type: ignore[no-untyped-def]
    """asyncio.run in a thread of its own: other tests (Playwright) may leave a loop running here."""
    result = []
    t = threading.Thread(target=lambda: result.append(asyncio.run(coro_fn())))
    t.start()
    t.join(timeout=30)
    return result[0]


def test_notification_between_read_and_wait_is_not_lost() -> None:
    hub = CompletionHub()

    async def poll() -> bool:
        with hub.subscribe("req-1") as finished:
            # The worker finishes (another thread) after the poll read the state, before it waits.
            t = threading.Thread(target=hub.notify, args=("req-1",))
            t.start()
            t.join()
            await asyncio.wait_for(finished.wait(), timeout=5)
            return True

    assert run(poll)
    assert hub._waiters == {}  # the subscription is gone after the block


def test_other_requests_do_not_wake_the_poll() -> None:
    hub = CompletionHub()

    async def poll() -> bool:
        with hub.subscribe("req-1") as finished:
            hub.notify("req-2")
            await asyncio.sleep(0.05)
            return finished.is_set()

    assert run(poll) is False
