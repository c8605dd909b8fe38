"""How a training run's state moves between distributed workers.

Rules (docs/distributed.md explains the design):

* **One worker at a time per run.** A worker executes a run's operations only
  while it holds the run's lease (``TrainingRun.lease_owner``/``lease_expires_at``,
  in the database, on the database's clock). A live worker renews its leases
  every few seconds; a SIGKILLed worker's lease runs out and another worker
  takes the run over.
* **Automatic internal checkpoints.** After create_model and load_weights, and
  after every ``TUFT_STATE_CHECKPOINT_EVERY``-th optim_step (default 4), the
  worker writes adapter + optimizer state to
  ``TUFT_CHECKPOINT_DIR/_internal/{tenant}/{run}/seq-{seq}`` and records that
  seq in ``TrainingRun.state_seq`` in the same transaction that completes the
  operation. These are never user checkpoints: they have no Checkpoint row, no
  tinker:// path, and count against no quota.
* **Restore and replay.** A worker whose memory does not hold the run as of the
  operation's seq (it never saw the run, or another worker ran some of its
  operations, or it restarted) loads the latest automatic checkpoint and
  re-runs the completed forward_backward and optim_step operations after it,
  in seq order, from their recorded requests: that rebuilds the weights, the
  optimizer state and the gradients accumulated since. Replay records nothing.
  So a completed step is never lost, whether or not a checkpoint followed it:
  an operation's result and next seq are committed together, and a step
  interrupted before that commit is run again by the next worker.
* **Fencing.** An outcome is committed only if the worker still holds the run's
  lease and the operation is still its own; otherwise nothing is recorded
  (``Superseded``) and the worker forgets its copy of the run.
* **A worker that lost its lease destroys nothing.** It writes an automatic
  checkpoint under a name of its own (``.staged-seq-{seq}-…``) and moves it to
  ``seq-{seq}`` only inside the transaction that checks its lease, with the
  run's row locked, so no other worker can take the run over meanwhile. A
  worker that lost the lease deletes only its own staged copy. Pruning deletes
  only finished ``seq-*`` checkpoints *older* than the one kept, never a newer
  one or another worker's files in progress.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import logging
import os
import shutil
import time
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import DateTimeField, ExpressionWrapper, F, Q, Value
from django.db.models.functions import Now

from engine.checkpoints import move_into_place
from engine.types import EngineError, UserInputError
from workers.executor import HANDLERS, ExecutionHooks, OutcomeRejected
from training_app.models import Operation, TrainingRun

if TYPE_CHECKING:  # importing the engine loads torch: keep it out of views and manage.py
    from engine.runtime import Engine

logger = logging.getLogger(__name__)

# Operations whose success changes a run's weights or optimizer state: each may be
# followed by an automatic checkpoint (see checkpoint_due).
STATE_KINDS = frozenset({Operation.Kind.CREATE_MODEL, Operation.Kind.LOAD_WEIGHTS, Operation.Kind.OPTIM_STEP})
# Operations that restore() re-runs after the automatic checkpoint, in seq order.
REPLAYED_KINDS = (Operation.Kind.FORWARD_BACKWARD, Operation.Kind.OPTIM_STEP)
# Statuses of an operation that still has to run (or finish running).
UNFINISHED = (Operation.Status.PENDING, Operation.Status.RUNNING)
# An operation whose worker died this many times fails instead of being retried
# again (it may be what kills workers, e.g. out of memory).
MAX_ATTEMPTS = 3
WORKER_DIED = (
    "the worker running this operation stopped before it finished ({attempts} attempts); "
    "the run is unchanged by it, resubmit it"
)


class Superseded(OutcomeRejected):
    """This worker lost the run's lease or the operation: its outcome must not be recorded."""


def lease_deadline(seconds: float) -> ExpressionWrapper:
    """The database's now + ``seconds``: leases use one clock, whatever the workers' clocks say."""
    return ExpressionWrapper(Now() + Value(timedelta(seconds=seconds)), output_field=DateTimeField())


# -- run leases ---------------------------------------------------------------


def acquire_run(run_id: str, worker: str, lease_s: float) -> bool:
    """Take (or extend) the lease of ``run_id``: free, expired, or already ours."""
    free = Q(lease_owner="") | Q(lease_owner=worker) | Q(lease_expires_at__lt=Now())
    return TrainingRun.objects.filter(pk=run_id).filter(free).update(
        lease_owner=worker, lease_expires_at=lease_deadline(lease_s)
    ) == 1


def release_run_lease(run_id: str, worker: str) -> None:
    TrainingRun.objects.filter(pk=run_id, lease_owner=worker).update(lease_owner="", lease_expires_at=None)


def renew_leases(worker: str, lease_s: float) -> None:
    """Keep everything this live worker holds: run leases and running operations."""
    TrainingRun.objects.filter(lease_owner=worker).update(lease_expires_at=lease_deadline(lease_s))
    Operation.objects.filter(worker=worker, status=Operation.Status.RUNNING).update(
        lease_expires_at=lease_deadline(lease_s)
    )


# -- automatic internal checkpoints --------------------------------------------------


def internal_root() -> Path:
    return Path(settings.TUFT_CHECKPOINT_DIR) / "_internal"


def run_state_dir(run: TrainingRun) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run.id)
    return internal_root() / str(run.tenant_id) / safe


def state_checkpoint(run: TrainingRun, seq: int) -> Path:
    return run_state_dir(run) / f"seq-{seq}"


def staged_checkpoint(run: TrainingRun, seq: int) -> Path:
    """Where a worker writes a run's state before it may publish it as ``seq-{seq}``."""
    return run_state_dir(run) / f".staged-seq-{seq}-{uuid.uuid4().hex}"


def prune_state(run: TrainingRun, keep_seq: int | None) -> None:
    """Delete a run's automatic checkpoints older than ``keep_seq`` (None: the whole directory).

    Only finished ``seq-N`` directories with N < ``keep_seq`` go: a caller that
    read an outdated ``state_seq`` must not delete a newer state, nor another
    worker's staged or temporary files still being written.
    """
    directory = run_state_dir(run)
    if keep_seq is None:
        shutil.rmtree(directory, ignore_errors=True)
        return
    if not directory.exists():
        return
    for child in directory.iterdir():
        name, _, seq = child.name.partition("-")
        if name == "seq" and seq.isdigit() and int(seq) < keep_seq:
            shutil.rmtree(child, ignore_errors=True)


def restore(engine: Engine, run: TrainingRun, upto_seq: int) -> int:
    """Rebuild ``run`` in ``engine`` as of just before ``upto_seq``; return how many ops were replayed."""
    engine.release_run(run.id)
    if run.state_seq is None:
        raise EngineError(f"training run {run.id} has no saved state to resume from (its creation failed?)")
    directory = state_checkpoint(run, run.state_seq)
    if not directory.exists():
        raise EngineError(f"training run {run.id}: its automatic checkpoint {directory} is missing")
    engine.load(run.id, run.base_model, directory, with_optimizer=True)
    replay = list(
        Operation.objects.filter(
            training_run=run, kind__in=REPLAYED_KINDS, status=Operation.Status.COMPLETED,
            seq_id__gt=run.state_seq, seq_id__lt=upto_seq,
        ).select_related("training_run", "tenant").order_by("seq_id")
    )
    # Rebuild weights, optimizer state and accumulated gradients; the recorded results stay as they are.
    for op in replay:
        HANDLERS[op.kind](engine, op)
    logger.info("run %s restored from seq %d, replayed %d forward_backward/optim_step op(s)",
                run.id, run.state_seq, len(replay))
    return len(replay)


def checkpoint_every() -> int:
    """Write the automatic checkpoint after every this many optim_steps (>= 1)."""
    return max(1, int(os.environ.get("TUFT_STATE_CHECKPOINT_EVERY", "4")))


def checkpoint_due(op: Operation) -> bool:
    """Whether ``op``, about to complete, is followed by an automatic checkpoint.

    create_model and load_weights always are (nothing to replay from before
    them); an optim_step when it is the ``checkpoint_every()``-th since the last
    one. Fewer checkpoints mean a cheaper step and a longer replay on hand-off.
    """
    run = op.training_run
    if run is None or op.kind not in STATE_KINDS:
        return False
    if op.kind != Operation.Kind.OPTIM_STEP or run.state_seq is None:
        return True
    since = Operation.objects.filter(
        training_run=run, kind=Operation.Kind.OPTIM_STEP, status=Operation.Status.COMPLETED,
        seq_id__gt=run.state_seq, seq_id__lt=op.seq_id,
    ).count()
    return since + 1 >= checkpoint_every()


# -- the executor hooks ------------------------------------------------------------


class LocalRuns:
    """What this worker's memory holds: per run, the next seq its state is valid for."""

    def __init__(self) -> None:
        self.next_seq: dict[str, int] = {}
        self.last_used: dict[str, float] = {}

    def valid_for(self, run_id: str, seq: int) -> bool:
        return self.next_seq.get(run_id) == seq

    def mark(self, run_id: str, seq: int) -> None:
        self.next_seq[run_id] = seq
        self.last_used[run_id] = time.monotonic()

    def forget(self, run_id: str) -> None:
        self.next_seq.pop(run_id, None)
        self.last_used.pop(run_id, None)


class HandoffHooks(ExecutionHooks):
    """Execution hooks of a distributed worker (see the module docstring)."""

    def __init__(self, worker: str, lease_s: float, local: LocalRuns) -> None:
        self.worker = worker
        self.lease_s = lease_s
        self.local = local
        # request id -> automatic checkpoint written by ``persist``, not yet published.
        self._staged: dict[str, Path] = {}

    def claim(self, op: Operation) -> bool:
        claimed = Operation.objects.filter(pk=op.pk, status=Operation.Status.PENDING).update(
            status=Operation.Status.RUNNING, started_at=Now(), worker=self.worker,
            lease_expires_at=lease_deadline(self.lease_s), attempts=F("attempts") + 1,
        )
        return claimed == 1

    def prepare(self, engine: Engine, op: Operation) -> None:
        run = op.training_run
        if run is None or op.seq_id is None:
            return
        if op.kind == Operation.Kind.CREATE_MODEL or (op.kind == Operation.Kind.LOAD_WEIGHTS and op.seq_id == 0):
            # The operation creates the run's state from nothing: drop any stale copy.
            if not self.local.valid_for(run.id, op.seq_id):
                engine.release_run(run.id)
            self.local.mark(run.id, op.seq_id)
            return
        if run.released:
            raise UserInputError(f"training run {run.id} was released when its session ended")
        if not (engine.has_run(run.id) and self.local.valid_for(run.id, op.seq_id)):
            self.local.forget(run.id)
            restore(engine, run, op.seq_id)
        self.local.mark(run.id, op.seq_id)

    def persist(self, engine: Engine, op: Operation) -> None:
        run = op.training_run
        if run is not None and op.seq_id is not None and checkpoint_due(op):
            # Under a name of its own: this worker may have lost the lease by now
            # and must not touch seq-{seq}, which another worker may rely on.
            staged = staged_checkpoint(run, op.seq_id)
            self._staged[op.request_id] = staged
            engine.save(run.id, staged, with_optimizer=True)

    def guard(self, op: Operation, succeeded: bool) -> None:
        staged = self._staged.pop(op.request_id, None)
        try:
            self._check_ownership(op)
            # Only operations whose automatic checkpoint was due (checkpoint_due) staged one;
            # the others are replayed from the last published state on a hand-off.
            if succeeded and staged is not None:
                run = op.training_run
                assert run is not None and op.seq_id is not None
                # The run's row is locked until this transaction ends, so the lease
                # checked above still holds while the checkpoint is published. A
                # seq-{seq} already there is a leftover of an attempt that never
                # committed: nobody relies on it (state_seq < seq).
                move_into_place(staged, state_checkpoint(run, op.seq_id))
                staged = None
                TrainingRun.objects.filter(pk=run.pk).update(state_seq=op.seq_id)
        finally:
            if staged is not None:  # not published: superseded, failed, or not a state change
                shutil.rmtree(staged, ignore_errors=True)

    def _check_ownership(self, op: Operation) -> None:
        """Raise Superseded unless ``op`` and its run are still this worker's (locking their rows)."""
        mine = Operation.objects.select_for_update().filter(
            pk=op.pk, status=Operation.Status.RUNNING, worker=self.worker
        ).exists()
        if not mine:
            raise Superseded(f"operation {op.request_id} is no longer this worker's")
        if op.training_run_id is None:
            return
        held = TrainingRun.objects.select_for_update().filter(pk=op.training_run_id, lease_owner=self.worker).exists()
        if not held:
            raise Superseded(f"worker {self.worker} lost the lease of run {op.training_run_id}")
