"""dispatch.ordering without threads or Django: the seq rule, and RunOrdering (seq order, gaps, release)."""

from __future__ import annotations

from dispatch.ordering import RunOrdering, next_in_order


def test_release_of_a_run_waiting_for_a_gap_returns_its_queued_ops_and_never_breaks_later_passes() -> None:
    # The hardening issue: seq 5 waits for 1-4, then the session ends. The release used to
    # forget the run's next seq but keep seq 5 queued, and the next pass raised KeyError.
    o: RunOrdering[str] = RunOrdering(gap_timeout_s=60)
    o.add("r", 5, "req5", next_seq_id=1)
    o.add("other", 1, "other1", next_seq_id=1)
    assert o.pop_ready(now=0) == [("other1", "other", 1)]
    assert o.forget("r") == ["req5"]
    assert o.pop_ready(now=1000) == []  # past the gap timeout: nothing of r comes back
    o.done("other", 1)
    o.add("other", 2, "other2", next_seq_id=1)
    assert o.pop_ready(now=1000) == [("other2", "other", 2)]
    assert o.waiting() == 0


def test_forget_returns_queued_ops_in_seq_order_and_ignores_the_one_in_flight() -> None:
    o: RunOrdering[str] = RunOrdering(gap_timeout_s=60)
    for seq in (3, 1, 2):
        o.add("r", seq, f"req{seq}", next_seq_id=1)
    assert o.pop_ready(now=0) == [("req1", "r", 1)]
    assert o.forget("r") == ["req2", "req3"]
    o.done("r", 1)  # the in-flight op finishing after the release is harmless
    assert o.pop_ready(now=0) == [] and o.waiting() == 0
    assert o.forget("r") == [] and o.forget("never-seen") == []


def test_a_released_run_id_used_again_starts_afresh() -> None:
    o: RunOrdering[str] = RunOrdering(gap_timeout_s=60)
    o.add("r", 1, "a", next_seq_id=1)
    o.forget("r")
    o.add("r", 7, "b", next_seq_id=7)
    assert o.pop_ready(now=0) == [("b", "r", 7)]


def test_late_arrival_after_a_skipped_gap_runs_next() -> None:
    o: RunOrdering[str] = RunOrdering(gap_timeout_s=10)
    o.add("r", 3, "req3", next_seq_id=2)
    assert o.pop_ready(now=0) == []
    assert o.pop_ready(now=11) == [("req3", "r", 3)]  # seq 2 skipped
    o.add("r", 2, "req2", next_seq_id=2)  # ... and arrives after all
    o.done("r", 3)
    assert o.pop_ready(now=12) == [("req2", "r", 2)]


def test_the_seq_rule_runs_the_next_seq_else_waits_for_it_until_the_gap_timeout() -> None:
    assert next_in_order(2, [], waited_s=100, gap_timeout_s=10) is None  # nothing queued
    assert next_in_order(2, [2, 3], waited_s=0, gap_timeout_s=10) == 2  # its turn
    assert next_in_order(2, [3, 4], waited_s=9.9, gap_timeout_s=10) is None  # seq 2 may still come
    assert next_in_order(2, [4, 3], waited_s=10, gap_timeout_s=10) == 3  # gap skipped: the lowest queued
    assert next_in_order(5, [3, 7], waited_s=0, gap_timeout_s=10) == 3  # arrived after its gap was skipped


def test_the_lanes_and_the_rule_agree_on_a_gap() -> None:
    """RunOrdering measures the wait from when it first saw the gap, then applies next_in_order."""
    o: RunOrdering[str] = RunOrdering(gap_timeout_s=10)
    o.add("r", 1, "req1", next_seq_id=0)
    assert o.pop_ready(now=100) == []  # waiting for seq 0 since t=100
    assert o.pop_ready(now=109.9) == []
    assert o.pop_ready(now=110) == [("req1", "r", 1)]
