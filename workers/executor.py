"""Executing operations: load the spec → call the engine → save the result.

``EngineExecutor.execute(request_id)`` is what a worker (embedded thread or RQ
job) runs for one operation. Handlers are registered per operation kind with
``@handles``; sampling_app registers its own. The executor owns the process's
``Engine``, created on first use.

``EngineExecutor.execute_batch(request_ids)`` runs several operations with one
engine call: kinds registered with ``handles_batch`` (forward, forward_backward,
optim_step, sample) say how to turn an operation into the engine's request, which batch
entry point takes them (``Engine.forward_backward_many``, ``Engine.optim_step_many``,
``Engine.sample_many``)
and how to turn each result into the operation's outcome. Every operation of a
batch is claimed, failed or completed on its own, exactly as ``execute`` would.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from django.db import close_old_connections, transaction
from django.utils import timezone

from dispatch.completions import completion_hub
from engine.types import EngineError, UserInputError
from monitoring_app.log_context import bind_tenant, log_context
from sessions_app.usage import record_operation_usage
from training_app.models import Operation, TrainingRun
from training_app.ready_results import ready_results
from training_app.signals import operation_finished
from tuft_project import gc_freeze
from tuft_project.exceptions import ApiError
from tuft_project.runtime import get_config

if TYPE_CHECKING:  # importing the engine loads torch: keep it out of views and manage.py
    from engine.runtime import Engine

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    result: dict[str, Any] | None = None
    blob: bytes | None = None  # protobuf result
    num_tokens: int = 0  # tokens through the model (training), for usage accounting
    prefill_tokens: int = 0  # sampling: prompt tokens
    sampled_tokens: int = 0  # sampling: generated tokens
    metrics: dict[str, float] | None = None


Handler = Callable[["Engine", Operation], Outcome]
HANDLERS: dict[str, Handler] = {}


def handles(kind: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return deco


@dataclass(frozen=True)
class BatchHandler:
    """How operations of a kind run together in one engine call.

    ``prepare(engine, op)`` returns ``(engine request, context)`` and raises for
    bad input (that operation alone fails); ``run(engine, requests)`` is the
    batch entry point, one result or ``EngineError`` per request, in order;
    ``finish(op, context, result)`` builds the operation's ``Outcome``.
    Handlers with the same ``run`` can share a batch.
    """

    prepare: Callable[["Engine", Operation], tuple[Any, Any]]
    run: Callable[["Engine", list[Any]], list[Any]]
    finish: Callable[[Operation, Any, Any], Outcome]

    def single(self, engine: Engine, op: Operation) -> Outcome:
        """The one-operation handler: a batch of one."""
        request, context = self.prepare(engine, op)
        result = self.run(engine, [request])[0]
        if isinstance(result, Exception):
            raise result
        return self.finish(op, context, result)


BATCH_HANDLERS: dict[str, BatchHandler] = {}


def handles_batch(kind: str, handler: BatchHandler) -> None:
    """Register ``handler`` for ``kind``, for batches and (as a batch of one) for ``execute``."""
    BATCH_HANDLERS[kind] = handler
    HANDLERS[kind] = handler.single


class OutcomeRejected(Exception):
    """Raised by ``ExecutionHooks.guard``: this executor must record nothing for the operation."""


class ExecutionHooks:
    """How an executor claims, prepares and commits one operation.

    This default is the embedded worker's: the process that records operations
    runs them, and a run's adapter lives only in its memory. Distributed workers
    use ``workers.handoff.HandoffHooks`` (leases, automatic checkpoints,
    restore when a run moves between workers).
    """

    def claim(self, op: Operation) -> bool:
        """Mark ``op`` running; False when it is not this executor's to run."""
        Operation.objects.filter(pk=op.pk).update(status=Operation.Status.RUNNING, started_at=timezone.now())
        return True

    def prepare(self, engine: Engine, op: Operation) -> None:
        """Make sure the engine holds the run state ``op`` needs; raise EngineError if it cannot."""
        run = op.training_run
        if run is not None and op.kind != Operation.Kind.CREATE_MODEL and op.seq_id != 0:
            if run.released:
                raise UserInputError(f"training run {run.id} was released when its session ended")
            if not engine.has_run(run.id):
                raise EngineError(f"training run {run.id} is not loaded (the server restarted?)")

    def persist(self, engine: Engine, op: Operation) -> None:
        """Runs after the handler succeeded, before its outcome is committed."""

    def guard(self, op: Operation, succeeded: bool) -> None:
        """Runs first inside the transaction that records the outcome; raise to record nothing."""


class EngineExecutor:
    """Runs operations against this process's engine."""

    def __init__(self, hooks: ExecutionHooks | None = None) -> None:
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self.hooks = hooks or ExecutionHooks()

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                # Lazy on purpose: importing the engine loads torch, which the API
                # process in distributed mode (and manage.py) never needs.
                from engine.runtime import Engine

                self._engine = Engine(get_config().models, on_loaded=gc_freeze.freeze_long_lived)
            return self._engine

    def execute(self, request_id: str) -> None:
        with log_context(request_id=request_id):  # every log line of this operation names it
            self._execute(request_id)

    def _execute(self, request_id: str) -> None:
        close_old_connections()
        try:
            op = Operation.objects.select_related("training_run", "sampling_session", "tenant").get(pk=request_id)
        except Operation.DoesNotExist:
            logger.error("operation %s vanished before it ran", request_id)
            return
        bind_tenant(op.tenant.name)
        if op.is_done:  # failed at submission: only its place in the order remains
            _advance_run(op)
            _count_refused(op)
            completion_hub.notify(op.request_id)
            return
        if not self.hooks.claim(op):
            return
        try:
            self._run(op)
        except OutcomeRejected:
            raise
        except Exception:
            # Recording the outcome itself failed (e.g. the database refused the
            # result): fail the future rather than leave it running forever.
            logger.exception("could not record the outcome of operation %s", op.request_id)
            _finish(op, error="internal error while recording the result", category="server",
                    guard=self.hooks.guard)
        finally:
            close_old_connections()

    def _run(self, op: Operation) -> None:
        def produce() -> Outcome:
            self.hooks.prepare(self.engine, op)
            return HANDLERS[op.kind](self.engine, op)

        self._record(op, produce)

    def _record_failure(self, op: Operation, exc: Exception) -> None:
        """Fail ``op`` with what ``exc`` says: whose fault, and why."""
        guard = self.hooks.guard
        if isinstance(exc, EngineError):
            _finish(op, error=str(exc), category="user" if exc.user else "server", guard=guard)
        elif isinstance(exc, ApiError):  # e.g. a checkpoint that is not (or no longer) accessible
            _finish(op, error=exc.detail, category="user", guard=guard)
        else:
            logger.error("operation %s (%s) of tenant %s failed", op.request_id, op.kind, op.tenant_id,
                         exc_info=exc)
            _finish(op, error=f"internal error: {type(exc).__name__}: {exc}", category="server", guard=guard)

    # -- batches ----------------------------------------------------------------

    def execute_batch(self, request_ids: list[str]) -> None:
        """Run the operations with one engine call and record each outcome on its own.

        The operations must share a batch entry point (the scheduler only groups
        forward/forward_backward, or samples); any other goes through ``execute``.
        A bad request fails alone; the others still run.
        """
        close_old_connections()
        try:
            ops = Operation.objects.select_related("training_run", "sampling_session", "tenant").in_bulk(request_ids)
            handler: BatchHandler | None = None
            prepared: list[tuple[Operation, Any, Any]] = []
            for request_id in request_ids:
                op = ops.get(request_id)
                kind_handler = BATCH_HANDLERS.get(op.kind) if op is not None else None
                if op is None or kind_handler is None or (handler is not None and kind_handler.run != handler.run):
                    self.execute(request_id)
                    continue
                entry = self._prepare_batched(op, kind_handler)
                if entry is not None:
                    handler = kind_handler
                    prepared.append(entry)
            if handler is not None and prepared:
                self._run_batched(handler, prepared)
        finally:
            close_old_connections()

    def _prepare_batched(self, op: Operation, handler: BatchHandler) -> tuple[Operation, Any, Any] | None:
        """Claim and prepare one operation of a batch; None when it is settled or not ours."""
        if op.is_done:  # failed at submission: only its place in the order remains
            _advance_run(op)
            _count_refused(op)
            completion_hub.notify(op.request_id)
            return None
        if not self.hooks.claim(op):
            return None
        try:
            self.hooks.prepare(self.engine, op)
            request, context = handler.prepare(self.engine, op)
        except OutcomeRejected:
            logger.warning("operation %s is no longer this worker's; not recorded", op.request_id)
            return None
        except Exception as exc:
            self._settle(op, lambda: self._record_failure(op, exc))
            return None
        return op, request, context

    def _run_batched(self, handler: BatchHandler, prepared: list[tuple[Operation, Any, Any]]) -> None:
        try:
            results = handler.run(self.engine, [request for _, request, _ in prepared])
            if len(results) != len(prepared):
                raise RuntimeError(f"engine returned {len(results)} outcomes for {len(prepared)} requests")
        except Exception as exc:  # the whole call failed: so did each of its operations
            logger.exception("batch of %d operation(s) failed as a whole", len(prepared))
            results = [exc] * len(prepared)
        for (op, _, context), result in zip(prepared, results):
            self._settle(op, lambda: self._complete_batched(handler, op, context, result))

    def _complete_batched(self, handler: BatchHandler, op: Operation, context: Any, result: Any) -> None:
        def produce() -> Outcome:
            if isinstance(result, Exception):
                raise result
            return handler.finish(op, context, result)

        self._record(op, produce)

    def _record(self, op: Operation, produce: Callable[[], Outcome]) -> None:
        """Record ``produce()``'s outcome (after persisting the run's state), or the error it raised."""
        try:
            outcome = produce()
            failpoint(op)
            self.hooks.persist(self.engine, op)
        except OutcomeRejected:
            raise
        except Exception as exc:
            self._record_failure(op, exc)
        else:
            _finish(op, outcome=outcome, guard=self.hooks.guard)

    def _settle(self, op: Operation, record: Callable[[], None]) -> None:
        """Record one operation's outcome; never leave it running if recording fails."""
        try:
            record()
        except OutcomeRejected:
            logger.warning("operation %s is no longer this worker's; not recorded", op.request_id)
        except Exception:
            logger.exception("could not record the outcome of operation %s", op.request_id)
            _finish(op, error="internal error while recording the result", category="server",
                    guard=self.hooks.guard)

    def release_run(self, run_id: str) -> None:
        if self._engine is not None:
            self._engine.release_run(run_id)


def failpoint(op: Operation) -> None:
    """Test hook: ``TUFT_FAILPOINT=<kind>:<marker file>[,<kind>:<marker file>...]``.

    The first operation of such a kind stalls right after the engine applied it
    in memory and before anything is persisted, so that a test can kill or stop
    the process mid-step; it writes its pid to the marker first, and goes on
    once ``<marker>.release`` exists (else after an hour). Each marker fires
    once (it exists afterwards), so a retry goes through.
    """
    for entry in filter(None, os.environ.get("TUFT_FAILPOINT", "").split(",")):
        kind, _, marker = entry.partition(":")
        if op.kind != kind or not marker or os.path.exists(marker):
            continue
        Path(marker).write_text(str(os.getpid()))
        logger.warning("failpoint: stalling %s %s before it is persisted", op.kind, op.request_id)
        deadline = time.monotonic() + 3600
        while not os.path.exists(marker + ".release") and time.monotonic() < deadline:
            time.sleep(0.2)
        logger.warning("failpoint: %s %s goes on", op.kind, op.request_id)


def _count_refused(op: Operation) -> None:
    """A request refused at submission (e.g. over a token budget) is a failed operation in usage, once.

    Such an operation never ran, so ``started_at`` is empty; claiming it here
    keeps a re-dispatch from counting it twice.
    """
    with transaction.atomic():
        if Operation.objects.filter(pk=op.pk, started_at__isnull=True).update(started_at=op.finished_at):
            record_operation_usage(op, None)


def _advance_run(op: Operation) -> None:
    if op.training_run_id is not None and op.seq_id is not None:
        TrainingRun.objects.filter(pk=op.training_run_id, next_seq_id__lte=op.seq_id).update(next_seq_id=op.seq_id + 1)


def _finish(
    op: Operation, outcome: Outcome | None = None, error: str = "", category: str = "",
    guard: Callable[[Operation, bool], None] | None = None,
) -> None:
    with transaction.atomic():
        if guard is not None:
            guard(op, outcome is not None)
        if outcome is not None:
            Operation.objects.filter(pk=op.pk).update(
                status=Operation.Status.COMPLETED, result=outcome.result, result_blob=outcome.blob,
                num_tokens=outcome.num_tokens, metrics=outcome.metrics, finished_at=timezone.now(),
            )
        else:
            logger.info("operation %s (%s) failed [%s]: %s", op.request_id, op.kind, category, error)
            Operation.objects.filter(pk=op.pk).update(
                status=Operation.Status.FAILED, error=error, error_category=category, finished_at=timezone.now(),
            )
        _advance_run(op)

        record_operation_usage(op, outcome)
    try:
        op.refresh_from_db()
    except Exception:  # the outcome is recorded; only what follows from it is skipped
        logger.exception("could not read back operation %s after recording it", op.request_id)
        completion_hub.notify(op.request_id)
        return
    try:
        # The answer retrieve_future will send, encoded now from the committed row
        # (training_app.ready_results), before the waiting poll is woken.
        if not transaction.get_connection().in_atomic_block:  # only what is committed
            ready_results.put(op)
    except Exception:  # the poll then reads the database, as it does for any other result
        logger.exception("could not keep the answer of %s in memory", op.request_id)
    completion_hub.notify(op.request_id)
    try:
        operation_finished.send(sender=Operation, operation=op, metrics=(outcome.metrics if outcome else None) or {})
    except Exception:  # a listener's failure must never fail the operation
        logger.exception("operation_finished listener failed for %s", op.request_id)
