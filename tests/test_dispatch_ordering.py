"""Unit tests of per-run seq ordering (dispatch.embedded.RunOrdering), no server needed."""

from dispatch.embedded import RunOrdering


def test_out_of_order_arrivals_run_in_seq_order_one_at_a_time() -> None:
    o = RunOrdering(gap_timeout_s=60)
    o.add("r", 2, "req2", next_seq_id=0)
    o.add("r", 0, "req0", next_seq_id=0)
    o.add("r", 3, "req3", next_seq_id=0)
    assert o.pop_ready(now=0) == [("req0", "r", 0)]
    assert o.pop_ready(now=0) == []  # req0 still in flight
    o.done("r", 0)
    assert o.pop_ready(now=1) == []  # seq 1 has not arrived
    o.add("r", 1, "req1", next_seq_id=0)
    assert o.pop_ready(now=1) == [("req1", "r", 1)]
    o.done("r", 1)
    assert o.pop_ready(now=2) == [("req2", "r", 2)]
    o.done("r", 2)
    assert o.pop_ready(now=2) == [("req3", "r", 3)]


def test_runs_do_not_block_each_other() -> None:
    o = RunOrdering(gap_timeout_s=60)
    o.add("a", 5, "a5", next_seq_id=1)  # waits for a1..a4
    o.add("b", 1, "b1", next_seq_id=1)
    assert o.pop_ready(now=0) == [("b1", "b", 1)]


def test_a_seq_that_never_arrives_is_skipped_after_the_gap_timeout() -> None:
    o = RunOrdering(gap_timeout_s=10)
    o.add("r", 2, "req2", next_seq_id=1)
    assert o.pop_ready(now=0) == []
    assert o.pop_ready(now=5) == []
    assert o.pop_ready(now=11) == [("req2", "r", 2)]
