"""Dispatch: hand recorded operations to a worker, in per-run ``seq_id`` order.

Two back ends behind one interface (``submit_training`` / ``submit_sampling``):

* ``EmbeddedDispatcher`` (default): worker threads inside the server process,
  one lane for training and one for sampling, sharing one ``Engine``.
* the RQ back end (``dispatch.distributed``) when ``REDIS_URL`` or models.yaml
  ``persistence: {mode: redis_url}`` is set (docs/distributed.md); it keeps the same
  ordering rule (``dispatch.ordering.next_in_order``), applied to the database, in
  ``workers.runtime``.

Both use the Django-free core in ``dispatch/``: ``RunOrdering`` (an operation
of a run starts only after every smaller ``seq_id`` of that run finished; a seq
that never arrives is skipped after ``TUFT_SEQ_GAP_TIMEOUT_S``) and
``FairScheduler`` (round-robin by tenant; ready forward/forward_backward
operations of different runs, and sample requests, go to the engine together
under a token budget).

A lane thread never dies: whatever goes wrong in a scheduling pass or an
execution is logged and the lane goes on serving. ``healthy()`` (``/healthz``)
says whether both lanes are alive all the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

from django.conf import settings

from dispatch.ordering import RunOrdering
from dispatch.scheduler import FairScheduler, Work

logger = logging.getLogger(__name__)

# Re-exported: the ordering rule's one implementation lives in dispatch.ordering.
__all__ = ["Dispatcher", "EmbeddedDispatcher", "LaneLimits", "RunOrdering", "Work"]


class Dispatcher(Protocol):
    def submit_training(self, request_id: str, run_id: str, seq_id: int, next_seq_id: int,
                        work: Work | None = None) -> None: ...

    def submit_sampling(self, request_id: str, work: Work | None = None) -> None: ...

    def release_run(self, run_id: str) -> None: ...


class Executor(Protocol):
    """What the lanes call (``workers.executor.EngineExecutor``); each records its outcomes."""

    def execute(self, request_id: str) -> None: ...

    def execute_batch(self, request_ids: list[str]) -> None: ...

    def release_run(self, run_id: str) -> None: ...


@dataclass(frozen=True)
class LaneLimits:
    """How much work one engine call may take (settings ``TUFT_TRAIN_BATCH_*``, ``TUFT_SAMPLE_BATCH_*``)."""

    gap_timeout_s: float = 60.0
    train_batch_tokens: int = 8192
    train_batch_max: int = 16
    sample_batch_tokens: int = 8192
    sample_batch_max: int = 4

    @classmethod
    def from_settings(cls) -> LaneLimits:
        return cls(
            gap_timeout_s=float(getattr(settings, "TUFT_SEQ_GAP_TIMEOUT_S", cls.gap_timeout_s)),
            train_batch_tokens=int(getattr(settings, "TUFT_TRAIN_BATCH_TOKENS", cls.train_batch_tokens)),
            train_batch_max=int(getattr(settings, "TUFT_TRAIN_BATCH_MAX", cls.train_batch_max)),
            sample_batch_tokens=int(getattr(settings, "TUFT_SAMPLE_BATCH_TOKENS", cls.sample_batch_tokens)),
            sample_batch_max=int(getattr(settings, "TUFT_SAMPLE_BATCH_MAX", cls.sample_batch_max)),
        )


class EmbeddedDispatcher:
    """Worker threads in this process: no external service needed."""

    def __init__(self, executor: Executor, limits: LaneLimits | None = None) -> None:
        self._executor = executor
        self._limits = limits or LaneLimits.from_settings()
        self._cond = threading.Condition()
        self._ordering: RunOrdering[Work] = RunOrdering(self._limits.gap_timeout_s)
        self._train = FairScheduler()
        self._sample = FairScheduler()
        # Work of released runs, to fail (in seq order), then the releases themselves:
        # the training lane takes both before anything else, in that order.
        self._dropped: deque[Work] = deque()
        self._releases: deque[str] = deque()
        self._stopping = False  # set by stop(): lanes end after their current operation
        self._threads = [
            threading.Thread(target=self._serve, args=(self._train_once, "training"), name="tuft-train",
                             daemon=True),
            threading.Thread(target=self._serve, args=(self._sample_once, "sampling"), name="tuft-sample",
                             daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- the Dispatcher interface (called on request threads, after commit) ----------

    def submit_training(self, request_id: str, run_id: str, seq_id: int, next_seq_id: int,
                        work: Work | None = None) -> None:
        work = work or Work(request_id, tenant="", run_id=run_id, seq_id=seq_id, batchable=False)
        with self._cond:
            self._ordering.add(run_id, seq_id, work, next_seq_id)
            self._promote()

    def submit_sampling(self, request_id: str, work: Work | None = None) -> None:
        with self._cond:
            self._sample.add(work or Work(request_id, tenant=""))
            self._cond.notify_all()

    def release_run(self, run_id: str) -> None:
        """Free the run's adapter; its queued operations fail ("released"), never linger."""
        with self._cond:
            dropped = self._ordering.forget(run_id) + self._train.remove_run(run_id)
            dropped.sort(key=lambda w: w.seq_id or 0)
            if dropped:
                logger.info("run %s released with %d queued operation(s); failing them", run_id, len(dropped))
            self._dropped.extend(dropped)
            self._releases.append(run_id)
            self._cond.notify_all()

    def stop(self, timeout_s: float) -> bool:
        """Let each lane finish the operation it is running, then end it; queued ones never start.

        Returns True if every lane ended within ``timeout_s``. Used by the
        server's graceful shutdown (tuft_project.shutdown).
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # -- observability --------------------------------------------------------------

    def queue_depth(self) -> dict[str, int]:
        with self._cond:
            train = len(self._train) + self._ordering.waiting() + len(self._dropped)
            return {"train": train, "sample": len(self._sample)}

    def healthy(self) -> bool:
        """Both lanes alive (they catch everything, so False means a bug worth a restart)."""
        return all(t.is_alive() for t in self._threads)

    # -- the lanes ------------------------------------------------------------------

    def _serve(self, once: Callable[[], None], lane: str) -> None:
        """Run a lane forever: an unexpected error is logged and the lane carries on."""
        while not self._stopping:
            try:
                once()
            except Exception:
                logger.exception("%s lane: unexpected error; the lane keeps serving", lane)
                # Not a tight loop if the same error recurs at once (e.g. a database outage).
                time.sleep(0.5)

    def _promote(self) -> None:
        """Move operations whose turn came (per-run seq order) to the training scheduler."""
        ready = self._ordering.pop_ready(time.monotonic())
        for work, _, _ in ready:
            self._train.add(work)
        if ready:
            self._cond.notify_all()

    def _train_once(self) -> None:
        with self._cond:
            while not (self._dropped or self._releases or len(self._train)):
                if self._stopping:
                    return
                # Wake up now and then to apply the seq-gap timeout.
                self._cond.wait(timeout=1.0)
                self._promote()
            if self._stopping:
                return
            release = None
            if self._dropped:
                batch = [self._dropped.popleft()]
            elif self._releases:
                batch, release = [], self._releases.popleft()
            else:
                limits = self._limits
                batch = self._train.next_batch(limits.train_batch_tokens, limits.train_batch_max)
        try:
            if release is not None:
                self._executor.release_run(release)
            else:
                self._run(batch)
        finally:
            with self._cond:
                for work in batch:
                    if work.run_id is not None and work.seq_id is not None:
                        self._ordering.done(work.run_id, work.seq_id)
                self._promote()

    def _sample_once(self) -> None:
        with self._cond:
            while not len(self._sample):
                if self._stopping:
                    return
                self._cond.wait(timeout=1.0)
            if self._stopping:
                return
            limits = self._limits
            batch = self._sample.next_batch(limits.sample_batch_tokens, limits.sample_batch_max)
        self._run(batch)

    def _run(self, batch: list[Work]) -> None:
        # The executor records every outcome itself, failures included.
        if len(batch) == 1:
            self._executor.execute(batch[0].request_id)
        elif batch:
            self._executor.execute_batch([w.request_id for w in batch])
