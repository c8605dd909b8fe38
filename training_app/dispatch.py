"""Dispatch: hand recorded operations to a worker, in per-run ``seq_id`` order.

Two back ends behind one interface (``submit_training`` / ``submit_sampling``):

* ``EmbeddedDispatcher`` (default): worker threads inside the server process,
  one lane for training and one for sampling, sharing one ``Engine``.
* the RQ back end (``training_app.rq_dispatch``) when ``REDIS_URL`` or models.yaml
  ``persistence: {mode: redis_url}`` is set (docs/distributed.md); it keeps the same
  ordering rules, read from the database, in ``training_app.workers``.

Ordering rule: an operation of a training run executes only after every
operation with a smaller ``seq_id`` of that run has finished, even when the
requests arrive out of order (the SDK sends chunk 1 of a batch last). A seq id
that never arrives would block its run forever, so after ``gap_timeout_s`` the
dispatcher skips it (logged): a client bug must not hang every later future.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Protocol

from django.conf import settings

logger = logging.getLogger(__name__)


_RELEASE = "release:"  # marks a queue entry that frees a run instead of executing an operation


class Dispatcher(Protocol):
    def submit_training(self, request_id: str, run_id: str, seq_id: int, next_seq_id: int) -> None: ...

    def submit_sampling(self, request_id: str) -> None: ...

    def release_run(self, run_id: str) -> None: ...


class RunOrdering:
    """Per-run seq_id bookkeeping: which operations may run now.

    Not thread-safe on its own; the dispatcher calls it under its lock.
    """

    def __init__(self, gap_timeout_s: float) -> None:
        self.gap_timeout_s = gap_timeout_s
        self.pending: dict[str, dict[int, str]] = {}  # run -> seq -> request_id
        self.next_seq: dict[str, int] = {}
        self.in_flight: set[str] = set()
        self.waiting_since: dict[str, float] = {}

    def add(self, run_id: str, seq_id: int, request_id: str, next_seq_id: int) -> None:
        self.next_seq.setdefault(run_id, next_seq_id)
        self.pending.setdefault(run_id, {})[seq_id] = request_id

    def pop_ready(self, now: float) -> list[tuple[str, str, int]]:
        """(request_id, run_id, seq_id) of operations that may start now (one per run)."""
        ready = []
        for run_id, queue in list(self.pending.items()):
            if run_id in self.in_flight or not queue:
                continue
            seq = self.next_seq[run_id]
            if seq not in queue:
                lowest = min(queue)
                if lowest < seq:  # arrived after its gap was skipped: run it next
                    seq = lowest
                else:
                    since = self.waiting_since.setdefault(run_id, now)
                    if now - since < self.gap_timeout_s:
                        continue
                    logger.warning("run %s: seq %d never arrived in %.0fs; skipping to %d",
                                   run_id, seq, self.gap_timeout_s, lowest)
                    seq = self.next_seq[run_id] = lowest
            self.waiting_since.pop(run_id, None)
            ready.append((queue.pop(seq), run_id, seq))
            self.in_flight.add(run_id)
            if not queue:
                del self.pending[run_id]
        return ready

    def done(self, run_id: str, seq_id: int) -> None:
        self.in_flight.discard(run_id)
        self.next_seq[run_id] = max(self.next_seq.get(run_id, 0), seq_id + 1)

    def forget(self, run_id: str) -> None:
        self.next_seq.pop(run_id, None)
        self.waiting_since.pop(run_id, None)


class EmbeddedDispatcher:
    """Worker threads in this process: no external service needed."""

    def __init__(self, execute: Callable[[str], None], release: Callable[[str], None]) -> None:
        # execute(request_id) runs one operation to completion and records its outcome;
        # release(run_id) frees a run's adapter. Both run on the training lane only.
        self._execute = execute
        self._release = release
        self._cond = threading.Condition()
        self._ordering = RunOrdering(float(getattr(settings, "TUFT_SEQ_GAP_TIMEOUT_S", 60.0)))
        # Entries are (request_id, run_id, seq_id); run and seq are None for sampling.
        self._train_ready: deque[tuple[str, str | None, int | None]] = deque()
        self._sample_ready: deque[tuple[str, str | None, int | None]] = deque()
        self._stopping = False  # set by stop(): lanes end after their current operation
        self._threads = [
            threading.Thread(target=self._loop, args=(self._train_ready, True), name="tuft-train", daemon=True),
            threading.Thread(target=self._loop, args=(self._sample_ready, False), name="tuft-sample", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def submit_training(self, request_id: str, run_id: str, seq_id: int, next_seq_id: int) -> None:
        with self._cond:
            self._ordering.add(run_id, seq_id, request_id, next_seq_id)
            self._promote()

    def submit_sampling(self, request_id: str) -> None:
        with self._cond:
            self._sample_ready.append((request_id, None, None))
            self._cond.notify_all()

    def release_run(self, run_id: str) -> None:
        with self._cond:
            self._ordering.forget(run_id)
            self._train_ready.append((_RELEASE + run_id, None, None))
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

    def queue_depth(self) -> dict[str, int]:
        with self._cond:
            waiting = sum(len(q) for q in self._ordering.pending.values())
            return {"train": len(self._train_ready) + waiting, "sample": len(self._sample_ready)}

    def _promote(self) -> None:
        ready = self._ordering.pop_ready(time.monotonic())
        self._train_ready.extend(ready)
        if ready:
            self._cond.notify_all()

    def _loop(self, queue: deque[tuple[str, str | None, int | None]], ordered: bool) -> None:
        while True:
            with self._cond:
                while not queue and not self._stopping:
                    # Wake up now and then to apply the seq-gap timeout.
                    self._cond.wait(timeout=1.0)
                    if ordered:
                        self._promote()
                if self._stopping:
                    return
                request_id, run_id, seq_id = queue.popleft()
            try:
                if request_id.startswith(_RELEASE):
                    self._release(request_id[len(_RELEASE):])
                else:
                    self._execute(request_id)
            except Exception:  # the executor records failures itself; never kill the lane
                logger.exception("operation %s crashed the executor", request_id)
            finally:
                if run_id is not None and seq_id is not None:
                    with self._cond:
                        self._ordering.done(run_id, seq_id)
                        self._promote()
