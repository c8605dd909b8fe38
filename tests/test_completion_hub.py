"""The long-poll wake-up is never lost, even when completion lands before the wait starts."""

from __future__ import annotations

import asyncio
import threading

from training_app.futures import CompletionHub


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

    assert asyncio.run(poll())
    assert hub._waiters == {}  # the subscription is gone after the block


def test_other_requests_do_not_wake_the_poll() -> None:
    hub = CompletionHub()

    async def poll() -> bool:
        with hub.subscribe("req-1") as finished:
            hub.notify("req-2")
            await asyncio.sleep(0.05)
            return finished.is_set()

    assert asyncio.run(poll()) is False
