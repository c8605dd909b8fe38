"""Per-run ``seq_id`` ordering: which operation of each training run may start now.

An operation of a training run executes only after every operation with a
smaller ``seq_id`` of that run has finished, even when requests arrive out of
order (the SDK sends chunk 1 of a batch last). A seq id that never arrives would
block its run forever, so after ``gap_timeout_s`` it is skipped (logged): a
client bug must not hang every later future.

The rule itself is ``next_in_order``: the embedded lanes apply it to what
they queued in memory (``RunOrdering``), RQ workers to the run's operations in
the database (``workers.runtime``). Not thread-safe on its own; callers hold
their own lock. No Django here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Collection, Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


def next_in_order(next_seq: int, queued: Collection[int], waited_s: float, gap_timeout_s: float) -> int | None:
    """The seq of a run's operation that may start now, or None while the run must wait.

    ``next_seq`` is the run's next seq; ``queued`` the seqs of its operations
    waiting to run; ``waited_s`` how long the run has been waiting for
    ``next_seq`` to arrive. ``next_seq`` runs when it is queued; a smaller seq
    arrived after its gap was skipped and runs next; otherwise the lowest queued
    seq runs once ``next_seq`` has been missing for ``gap_timeout_s`` (a skip:
    the caller moves the run's next seq there and logs it).
    """
    if not queued:
        return None
    if next_seq in queued:
        return next_seq
    lowest = min(queued)
    if lowest < next_seq or waited_s >= gap_timeout_s:
        return lowest
    return None


@dataclass
class _RunState(Generic[Item]):
    next_seq: int
    pending: dict[int, Item] = field(default_factory=dict)  # seq -> queued item
    in_flight: bool = False
    waiting_since: float | None = None  # when the run started waiting for a missing seq


class RunOrdering(Generic[Item]):
    """Queued operations per run, released one at a time in seq order.

    ``Item`` is whatever the caller queues (a request id, a work description).
    A run is known from its first ``add`` until ``forget``; every method accepts
    runs it does not know (a release may race with anything).
    """

    def __init__(self, gap_timeout_s: float) -> None:
        self.gap_timeout_s = gap_timeout_s
        self._runs: dict[str, _RunState[Item]] = {}

    def add(self, run_id: str, seq_id: int, item: Item, next_seq_id: int) -> None:
        """Queue ``item`` as operation ``seq_id`` of ``run_id``.

        ``next_seq_id`` is the run's next seq as recorded when the operation was
        submitted; it only matters the first time this process sees the run.
        """
        state = self._runs.setdefault(run_id, _RunState(next_seq=next_seq_id))
        state.pending[seq_id] = item

    def pop_ready(self, now: float) -> list[tuple[Item, str, int]]:
        """(item, run_id, seq_id) of operations that may start now: at most one per run.

        Each returned operation is in flight until ``done(run_id, seq_id)``.
        """
        ready = []
        for run_id, state in self._runs.items():
            if state.in_flight or not state.pending:
                continue
            if state.next_seq not in state.pending and min(state.pending) > state.next_seq:
                if state.waiting_since is None:  # a gap: the run starts waiting for it now
                    state.waiting_since = now
            waited = now - state.waiting_since if state.waiting_since is not None else 0.0
            seq = next_in_order(state.next_seq, state.pending, waited, self.gap_timeout_s)
            if seq is None:
                continue
            if seq > state.next_seq:
                logger.warning("run %s: seq %d never arrived in %.0fs; skipping to %d",
                               run_id, state.next_seq, self.gap_timeout_s, seq)
                state.next_seq = seq
            state.waiting_since = None
            state.in_flight = True
            ready.append((state.pending.pop(seq), run_id, seq))
        return ready

    def done(self, run_id: str, seq_id: int) -> None:
        """Operation ``seq_id`` of ``run_id`` finished (succeeded or failed)."""
        state = self._runs.get(run_id)
        if state is None:  # forgotten (released) while the operation ran
            return
        state.in_flight = False
        state.next_seq = max(state.next_seq, seq_id + 1)

    def forget(self, run_id: str) -> list[Item]:
        """Drop everything known about ``run_id``; return its queued items in seq order.

        The caller must fail the returned operations: nothing will release them
        any more. An operation already in flight is not returned.
        """
        state = self._runs.pop(run_id, None)
        if state is None:
            return []
        return [state.pending[seq] for seq in sorted(state.pending)]

    def waiting(self) -> int:
        """How many queued operations are not yet released."""
        return sum(len(state.pending) for state in self._runs.values())
