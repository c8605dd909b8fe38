"""workers.runtime.SampleLane: an RQ worker's samples decode on a thread of their own.

With a recording executor: a flooding tenant's queued samples do not delay another
tenant's by more than one batch; a request queued twice (the reaper re-queues a
request whose marker expired) runs once; on stop the unstarted ones are handed back.
Counts and order only, no timing.
"""

from __future__ import annotations

import queue
import threading

from dispatch.scheduler import Work
from workers.runtime import SampleLane

WAIT_S = 30  # bounded waits; generous for a loaded machine


class RecordingExecutor:
    def __init__(self) -> None:
        self.calls: queue.Queue[list[str]] = queue.Queue()
        self.gate = threading.Event()  # the first call waits here: the lane is busy decoding
        self.started = threading.Event()

    def execute(self, request_id: str) -> None:
        self.execute_batch([request_id])

    def execute_batch(self, request_ids: list[str]) -> None:
        self.started.set()
        self.gate.wait(WAIT_S)
        self.calls.put(list(request_ids))

    def next(self) -> list[str]:
        return self.calls.get(timeout=WAIT_S)


def sample(tenant: str, n: int) -> Work:
    return Work(f"{tenant}-{n}", tenant=tenant, model="m", cost=10)


def test_a_flooding_tenant_delays_another_by_at_most_one_batch_and_duplicates_run_once() -> None:
    executor = RecordingExecutor()
    markers: list[str] = []
    lane = SampleLane(executor, markers.append)  # type: ignore[arg-type]
    try:
        lane.submit(sample("flood", 0))
        assert executor.started.wait(WAIT_S)  # flood-0 is decoding
        for n in range(1, 20):
            lane.submit(sample("flood", n))
        lane.submit(sample("other", 0))
        lane.submit(sample("other", 0))  # queued again by the reaper: ignored
        executor.gate.set()
        batches = [executor.next()]
        while sum(len(b) for b in batches) < 21:
            batches.append(executor.next())
    finally:
        lane.stop(WAIT_S, drain=False)
    assert batches[0] == ["flood-0"]
    assert "other-0" in batches[1]  # the slice bound: right after the batch that was decoding
    done = [r for b in batches for r in b]
    assert sorted(done) == sorted([f"flood-{n}" for n in range(20)] + ["other-0"])  # each exactly once
    assert markers == done  # each marker goes when its request starts, not before
    assert executor.calls.empty()


def test_stop_finishes_the_running_batch_and_hands_back_the_queued_ones() -> None:
    executor = RecordingExecutor()
    lane = SampleLane(executor, lambda request_id: None)  # type: ignore[arg-type]
    lane.submit(sample("a", 0))
    assert executor.started.wait(WAIT_S)
    lane.submit(sample("a", 1))
    lane.submit(sample("b", 0))
    stopper = threading.Thread(target=lambda: left.extend(lane.stop(WAIT_S, drain=False)))
    left: list[str] = []
    stopper.start()
    executor.gate.set()
    stopper.join(WAIT_S)
    assert executor.next() == ["a-0"]
    assert sorted(left) == ["a-1", "b-0"]
    assert executor.calls.empty()
    lane.submit(sample("c", 0))  # after stop: not taken (the reaper queues it for another worker)
    assert lane.depth() == 0
