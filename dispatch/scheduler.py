"""Which ready operations run next: round-robin by tenant, batched under a token budget.

One ``FairScheduler`` holds the *ready* work of one lane (training operations
whose turn has come under ``dispatch.ordering``, or sample requests). Each call
to ``next_batch`` picks what the lane runs next:

* **Round-robin by tenant, never FIFO across tenants.** Tenants take turns: the
  tenant whose turn it is leads the batch, and every tenant served goes to the
  back of the line. A tenant with 100 queued operations therefore delays a
  tenant with one by at most one batch.
* **Batches.** After the leader, batchable work of the same base model and the
  same ``group`` (the engine call that takes it: a pass, an optimizer update,
  a sampling batch) is added one item per tenant per round, in turn order, while it fits ``token_budget``
  and ``max_items``. The leader always runs, even alone over the budget, so a
  huge request is never starved; it just gets no company.
* **Non-batchable work** (save, load, create) runs alone when its
  tenant leads, and is never pulled into somebody else's batch.

Seq order is the caller's business: training work reaches the scheduler only
when ``RunOrdering`` released it, one operation per run at a time, so a batch
never holds two operations of one run.

Plain Python: no Django, no threads (the caller holds its lock).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Work:
    """One queued operation, as the scheduler sees it."""

    request_id: str
    tenant: str
    model: str = ""  # base model: only work of one base model can share a pass
    run_id: str | None = None  # training run (None for sampling)
    seq_id: int | None = None
    cost: int = 1  # tokens through the model (training: data tokens; sampling: prompt + max new)
    batchable: bool = True
    group: str = ""  # which engine call takes it (e.g. "pass", "optim"): only one group shares a batch


class FairScheduler:
    """Ready work of one lane, by tenant (see the module docstring)."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Work]] = {}  # tenant -> its ready work, oldest first
        self._turn: deque[str] = deque()  # tenants with ready work; the first one leads next

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def add(self, work: Work) -> None:
        queue = self._queues.get(work.tenant)
        if queue is None:
            queue = self._queues[work.tenant] = deque()
            self._turn.append(work.tenant)
        queue.append(work)

    def remove_run(self, run_id: str) -> list[Work]:
        """Take out the queued work of ``run_id`` (its run was released)."""
        removed: list[Work] = []
        for tenant in list(self._turn):
            queue = self._queues[tenant]
            keep = deque(w for w in queue if w.run_id != run_id)
            removed += [w for w in queue if w.run_id == run_id]
            self._queues[tenant] = keep
        self._drop_idle()
        return removed

    def next_batch(self, token_budget: int, max_items: int) -> list[Work]:
        """The work to run next (empty when nothing is queued); see the module docstring."""
        if not self._turn:
            return []
        leader_tenant = self._turn[0]
        leader = self._queues[leader_tenant].popleft()
        batch = [leader]
        served = [leader_tenant]
        if leader.batchable:
            self._fill(batch, served, token_budget, max(1, max_items))
        # Served tenants go to the back, in the order served; the others keep their place.
        waiting = [t for t in self._turn if t not in served]
        self._turn = deque(waiting + list(dict.fromkeys(served)))
        self._drop_idle()
        return batch

    def _fill(self, batch: list[Work], served: list[str], token_budget: int, max_items: int) -> None:
        """Add batchable work of the leader's model and group, one item per tenant per round."""
        model, group = batch[0].model, batch[0].group
        room = token_budget - batch[0].cost
        skip = {served[0]}  # the leader's tenant already has its item of the first round
        while len(batch) < max_items:
            added = False
            for tenant in list(self._turn):
                if tenant in skip:
                    continue
                work = self._take(tenant, model, group, room)
                if work is None:
                    continue
                batch.append(work)
                served.append(tenant)
                room -= work.cost
                added = True
                if len(batch) >= max_items:
                    return
            if not added:
                return
            skip = set()

    def _take(self, tenant: str, model: str, group: str, room: int) -> Work | None:
        """The tenant's oldest batchable work of ``model`` and ``group`` that fits in ``room`` tokens."""
        queue = self._queues[tenant]
        for i, work in enumerate(queue):
            if work.batchable and work.model == model and work.group == group and work.cost <= room:
                del queue[i]
                return work
        return None

    def _drop_idle(self) -> None:
        for tenant in [t for t in self._turn if not self._queues[t]]:
            self._turn.remove(tenant)
            del self._queues[tenant]

    def depth_by_tenant(self) -> dict[str, int]:
        return {tenant: len(self._queues[tenant]) for tenant in self._turn}
