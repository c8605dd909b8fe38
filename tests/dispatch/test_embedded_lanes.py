"""dispatch.embedded.EmbeddedDispatcher with a recording executor: lanes never die,
releases fail queued work, ready forward_backwards of several runs go out as one batch."""

from __future__ import annotations

import queue
import threading

from dispatch.scheduler import Work
from dispatch.embedded import EmbeddedDispatcher, LaneLimits

WAIT_S = 30  # bounded waits; generous for a loaded machine


class RecordingExecutor:
    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[str, object]] = queue.Queue()
        self.gate = threading.Event()
        self.gate.set()

    def execute(self, request_id: str) -> None:
        self.gate.wait(WAIT_S)
        self.calls.put(("execute", request_id))
        if request_id.startswith("boom"):
            raise RuntimeError("executor bug")

    def execute_batch(self, request_ids: list[str]) -> None:
        self.calls.put(("batch", list(request_ids)))

    def release_run(self, run_id: str) -> None:
        self.calls.put(("release", run_id))
        raise KeyError(run_id)  # even a failing release must not stop the lane

    def next(self) -> tuple[str, object]:
        return self.calls.get(timeout=WAIT_S)


def fb(tenant: str, run: str, seq: int) -> Work:
    return Work(f"{run}#{seq}", tenant=tenant, model="m", run_id=run, seq_id=seq, cost=10)


def test_lanes_survive_executor_errors_and_a_release_with_a_waiting_op() -> None:
    ex = RecordingExecutor()
    d = EmbeddedDispatcher(ex, LaneLimits(gap_timeout_s=3600))
    d.submit_training("boom#1", "r0", 1, 1, Work("boom#1", "t", run_id="r0", seq_id=1))
    assert ex.next() == ("execute", "boom#1")
    d.submit_training("r#5", "r", 5, 1, fb("t", "r", 5))  # waits for seq 1..4
    d.release_run("r")
    assert ex.next() == ("execute", "r#5")  # handed to the executor, which fails it as released
    assert ex.next() == ("release", "r")
    d.submit_training("s#1", "s", 1, 1, fb("t", "s", 1))
    assert ex.next() == ("execute", "s#1")
    d.submit_sampling("boom-sample", Work("boom-sample", "t"))
    assert ex.next() == ("execute", "boom-sample")
    d.submit_sampling("fine", Work("fine", "t"))
    assert ex.next() == ("execute", "fine")
    assert d.healthy()
    assert d.queue_depth() == {"train": 0, "sample": 0}


def test_ready_ops_of_several_runs_go_to_the_engine_together_in_tenant_turns() -> None:
    ex = RecordingExecutor()
    ex.gate.clear()
    d = EmbeddedDispatcher(ex, LaneLimits(train_batch_tokens=1000, train_batch_max=16))
    d.submit_training("hold#1", "hold", 1, 1, Work("hold#1", "z", run_id="hold", seq_id=1, batchable=False))
    for seq in (1, 2, 3):  # one run of tenant a with three queued ops: one per batch
        d.submit_training(f"a#{seq}", "a", seq, 1, fb("ta", "a", seq))
    d.submit_training("b#1", "b", 1, 1, fb("tb", "b", 1))
    d.submit_training("c#1", "c", 1, 1, fb("tc", "c", 1))
    ex.gate.set()
    assert ex.next() == ("execute", "hold#1")
    assert ex.next() == ("batch", ["a#1", "b#1", "c#1"])
    assert ex.next() == ("execute", "a#2")
    assert ex.next() == ("execute", "a#3")
