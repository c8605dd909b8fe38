"""The long-poll wake-up is never lost, even when completion lands before the wait starts."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
import uuid

import pytest

from sessions_app.models import Tenant
from tests.distributed.cluster import redis_reachable
from dispatch.completions import CompletionHub, CompletionSweeper, completion_hub
from training_app.models import Operation
from dispatch.queues import Backend
from dispatch.distributed import RQDispatcher


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


def test_notify_all_wakes_every_waiter() -> None:
    """After a lost Redis subscription every waiter re-reads its operation once."""
    hub = CompletionHub()

    async def poll() -> list[bool]:
        with hub.subscribe("req-1") as first, hub.subscribe("req-2") as second:
            threading.Thread(target=hub.notify_all).start()
            await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), timeout=10)
            return [first.is_set(), second.is_set()]

    assert run(poll) == [True, True]
    assert hub.waited_ids() == []


@pytest.mark.django_db(transaction=True)
def test_sweeper_wakes_only_waiters_of_finished_or_missing_operations() -> None:
    """The shared safety net: one query wakes the waiters whose operation finished without an event."""
    tenant = Tenant.objects.create(name="sweep")
    for request_id, status in (("done", Operation.Status.COMPLETED), ("failed", Operation.Status.FAILED),
                               ("pending", Operation.Status.PENDING), ("running", Operation.Status.RUNNING)):
        Operation.objects.create(request_id=request_id, tenant=tenant, kind=Operation.Kind.OPTIM_STEP, status=status)
    hub = CompletionHub()
    sweeper = CompletionSweeper(hub)
    ids = ["done", "failed", "pending", "running", "deleted"]

    async def poll() -> dict[str, bool]:
        with contextlib.ExitStack() as stack:
            events = {i: stack.enter_context(hub.subscribe(i)) for i in ids}
            notified = await asyncio.to_thread(sweeper.sweep)
            assert notified == 3
            await asyncio.wait_for(asyncio.gather(*(events[i].wait() for i in ("done", "failed", "deleted"))), 10)
            return {i: e.is_set() for i, e in events.items()}

    assert run(poll) == {"done": True, "failed": True, "pending": False, "running": False, "deleted": True}


@pytest.mark.skipif(not redis_reachable(), reason="needs Redis at 127.0.0.1:6379")
def test_a_completion_published_by_another_process_wakes_the_waiter() -> None:
    """Distributed mode: an RQ worker (another process) publishes on Redis; the API's listener wakes the poll.

    It also covers the gap before the listener subscribed: a completion published
    then reaches nobody, so the listener wakes every waiter once it is subscribed.
    """
    backend = Backend("redis://127.0.0.1:6379/0", f"tuft-hubtest-{uuid.uuid4().hex[:8]}", False, 30.0, 60.0)
    channel = backend.key("done")

    def publish_from_another_process(request_id: str) -> None:
        code = ("import redis, sys; "
                "sys.exit(0 if redis.Redis.from_url(sys.argv[1]).publish(sys.argv[2], sys.argv[3]) else 1)")
        deadline = time.monotonic() + 60
        # Until the listener's subscription is up the publish reaches no one (exit 1): repeat it.
        while subprocess.run([sys.executable, "-c", code, backend.redis_url, channel, request_id]).returncode:
            assert time.monotonic() < deadline, "the listener never subscribed"
            time.sleep(0.2)

    async def poll() -> bool:
        with completion_hub.subscribe("early") as early:
            RQDispatcher(backend)  # starts the listener thread
            # Nothing is published for "early": only the listener's catch-up wakes it.
            await asyncio.wait_for(early.wait(), timeout=30)
        # The listener is subscribed now: "late" is woken by the message itself.
        with completion_hub.subscribe("late") as late:
            await asyncio.to_thread(publish_from_another_process, "late")
            await asyncio.wait_for(late.wait(), timeout=30)
            return late.is_set()

    assert run(poll)
