"""Regression: releasing a run while some of its operations wait behind a seq gap.

Stopping a run (the admin's "stop") releases it with an operation still queued
behind a missing seq id; ``RunOrdering.forget`` then dropped the run's next
seq while its queue remained, and the next ``pop_ready`` raised KeyError in
the training lane (the lane died, and every later create_model answered 500).
"""

from training_app.dispatch import RunOrdering


def test_forgotten_run_with_waiting_operations_drains_in_order() -> None:
    o = RunOrdering(gap_timeout_s=60)
    o.add("r", 12, "r12", next_seq_id=1)
    o.add("r", 10, "r10", next_seq_id=1)  # both wait for seqs 1..9, which never come
    assert o.pop_ready(now=0) == []
    o.forget("r")  # the run is released
    assert o.pop_ready(now=1) == [("r10", "r", 10)]
    o.done("r", 10)
    assert o.pop_ready(now=1) == []  # seq 11 is a gap like any other: skipped after the timeout
    assert o.pop_ready(now=62) == [("r12", "r", 12)]
    o.add("s", 0, "s0", next_seq_id=0)  # other runs are unaffected
    assert o.pop_ready(now=1) == [("s0", "s", 0)]
