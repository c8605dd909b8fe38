"""What a distributed worker does per job, and between jobs.

The RQ side (``TuftWorker``, the job entry points) is ``workers.rq_worker``.
Each process has one ``WorkerRuntime``: the engine (base models loaded once at
start), what its memory holds of each run, and a maintenance thread that
renews leases, re-enqueues lost work (``workers.reaper``) and frees the adapters of
finished or idle runs.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from typing import Callable

import redis
from django.conf import settings
from django.db import close_old_connections, connection as db_connection
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from dispatch import queues
from dispatch.embedded import LaneLimits
from dispatch.ordering import next_in_order
from dispatch.scheduler import FairScheduler, Work
from training_app.actions import scheduling_work
from workers.handoff import (
    MAX_ATTEMPTS,
    UNFINISHED,
    WORKER_DIED,
    HandoffHooks,
    LocalRuns,
    Superseded,
    acquire_run,
    prune_state,
    release_run_lease,
    renew_leases,
)
from training_app.models import Operation, TrainingRun
from training_app.signals import operation_finished
from workers.executor import EngineExecutor, _finish
from workers.reaper import Reaper

logger = logging.getLogger(__name__)


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class SampleLane:
    """Sample requests this worker took, decoded on a thread of their own.

    Why (found by ``bench/bench_isolation.py --mode redis``): an RQ worker runs one
    job at a time, and a sample job used to decode to its end, so one tenant's
    maximal samples (minutes each on a CPU) held every other tenant's training
    drain behind them. Now a sample job only hands its request to this lane and
    returns; the lane decodes on its thread, taking the model lock per decode
    step (engine.sampling) as the embedded sampling lane does, and the job loop
    keeps running training drains in between. Requests are picked round-robin by
    tenant and batched under the ``TUFT_SAMPLE_BATCH_*`` limits (``FairScheduler``).

    Nothing is lost with the process: a queued request is still PENDING in the
    database and keeps its queue marker until the lane starts it, so the reaper
    queues it again once the marker expires; the claim (PENDING -> RUNNING) is
    atomic, so a request queued twice runs once.
    """

    def __init__(self, executor: EngineExecutor, delete_marker: Callable[[str], None],
                 companions: Callable[[list[str]], list[str]] = lambda ids: []) -> None:
        self._executor = executor
        self._delete_marker = delete_marker
        # More pending samples to decode with a batch, claimed from the database
        # (WorkerRuntime._sample_companions): their jobs may still wait in Redis.
        self._companions = companions
        self._limits = LaneLimits.from_settings()
        self._scheduler = FairScheduler()
        self._queued: set[str] = set()  # request ids in the scheduler (a re-queued job adds nothing)
        self._cond = threading.Condition()
        self._stopping = False
        self._drain_on_stop = False
        self._thread = threading.Thread(target=self._serve, name="tuft-worker-sample", daemon=True)
        self._thread.start()

    def submit(self, work: Work) -> None:
        with self._cond:
            if work.request_id in self._queued or self._stopping:
                return  # already waiting here; or stopping (the reaper queues it for another worker)
            self._queued.add(work.request_id)
            self._scheduler.add(work)
            self._cond.notify_all()

    def depth(self) -> int:
        with self._cond:
            return len(self._scheduler)

    def stop(self, timeout_s: float, drain: bool) -> list[str]:
        """Finish the batch being decoded (``drain``: and every queued one); returns the unstarted ids."""
        with self._cond:
            self._stopping, self._drain_on_stop = True, drain
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            left = sorted(self._queued)
            self._queued.clear()
            self._scheduler = FairScheduler()
            return left

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not len(self._scheduler) and not self._stopping:
                    self._cond.wait()
                if not len(self._scheduler) or (self._stopping and not self._drain_on_stop):
                    return
                batch = self._scheduler.next_batch(self._limits.sample_batch_tokens, self._limits.sample_batch_max)
                for work in batch:
                    self._queued.discard(work.request_id)
            ids = [w.request_id for w in batch]
            try:
                ids += self._companions(ids)
                for request_id in ids:
                    self._delete_marker(request_id)
                if len(ids) > 1:
                    logger.debug("sample lane: one pass for %d samples", len(ids))
                if len(ids) == 1:
                    self._executor.execute(ids[0])
                else:
                    self._executor.execute_batch(ids)
            except Exception:  # the executor records outcomes itself; the lane must never die
                logger.exception("sample lane: unexpected error; it keeps serving")
            finally:
                db_connection.close()


class WorkerRuntime:
    """The process's engine and run bookkeeping; jobs call ``drain`` and ``sample``.

    Jobs run one at a time on the worker's main thread; ``lock`` is held while
    one runs, so the maintenance thread frees adapters only between jobs.
    """

    def __init__(self, name: str) -> None:
        backend = queues.get_backend()
        if backend is None:
            raise RuntimeError("distributed mode is off: set REDIS_URL or persistence.redis_url in models.yaml")
        self.backend = backend
        self.name = name
        self.local = LocalRuns()
        self.executor = EngineExecutor(HandoffHooks(name, backend.lease_s, self.local))
        self.lock = threading.RLock()
        self.gap_timeout_s = float(settings.TUFT_SEQ_GAP_TIMEOUT_S)
        self.idle_evict_s = float(os.environ.get("TUFT_WORKER_IDLE_EVICT_S", "900"))
        self.tick_s = max(0.5, backend.lease_s / 3)
        self._started = False
        self._stop = threading.Event()
        # Set on the first SIGTERM/SIGINT: the current operation finishes, the rest is handed over.
        self.stopping = False
        # What the liveness key holds: tells this process from an earlier one of the same name.
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.shutdown_started: float | None = None  # monotonic time of the first SIGTERM/SIGINT
        self.samples: SampleLane | None = None  # started with the runtime (start())

    # -- start-up ---------------------------------------------------------

    def start(self) -> None:
        """Load every base model now (not on the first job) and start maintenance."""
        if self._started:
            return
        self._started = True
        operation_finished.connect(self._on_finished, weak=False)
        engine = self.executor.engine
        for name in engine.specs:
            engine.host(name)
        close_old_connections()
        self.samples = SampleLane(self.executor, self._delete_sample_marker, self._sample_companions)
        threading.Thread(target=self._maintain, name="tuft-worker-maintenance", daemon=True).start()
        logger.info("worker %s ready: models %s resident", self.name, ", ".join(engine.specs))

    def stop(self, drain_samples: bool = False) -> None:
        """After a graceful shutdown: stop maintenance and stop attracting jobs to this worker's queue.

        The sample being decoded finishes (within ``TUFT_SHUTDOWN_TIMEOUT_S``);
        queued samples are handed to other workers, or with ``drain_samples``
        (``--burst``) decoded here first.
        """
        if self.samples is not None:
            timeout = float(settings.TUFT_SHUTDOWN_TIMEOUT_S)
            for request_id in self.samples.stop(3600 if drain_samples else timeout, drain_samples):
                try:
                    queues.enqueue_sample(request_id, force=True)
                except redis.RedisError:
                    pass  # the reaper queues it
        self._stop.set()
        try:
            queues.connection().delete(self.backend.key("alive", self.name))
        except redis.RedisError:
            pass

    def start_shutdown_watchdog(self, signame: str) -> None:
        """First SIGTERM/SIGINT: log it, and bound how long the current operation may still take.

        After ``TUFT_SHUTDOWN_TIMEOUT_S`` the worker hands the operation back
        (another worker runs it again from the run's last automatic checkpoint)
        and exits 0 without waiting for it. Called from the signal handler, so
        the work (database included) happens on a thread of its own.
        """
        if self.shutdown_started is not None:
            return
        self.shutdown_started = time.monotonic()
        timeout = float(settings.TUFT_SHUTDOWN_TIMEOUT_S)
        logger.warning("worker %s: received %s: taking no new jobs; finishing the current operation, if any "
                       "(at most %.0f s), then handing its run to other workers", self.name, signame, timeout)
        threading.Thread(target=self._watch_shutdown, args=(timeout,), name="tuft-worker-shutdown",
                         daemon=True).start()

    def _watch_shutdown(self, timeout: float) -> None:
        try:
            running = list(Operation.objects.filter(worker=self.name, status=Operation.Status.RUNNING)
                           .values_list("request_id", "kind"))
            if running:
                logger.info("worker %s: waiting for %s", self.name, ", ".join(f"{k} {r}" for r, k in running))
        except Exception:  # the log line is a courtesy
            pass
        finally:
            db_connection.close()
        time.sleep(timeout)
        self._abandon_and_exit(timeout)

    def _abandon_and_exit(self, timeout: float) -> None:
        """The shutdown timeout passed mid-operation: hand the work back, then exit 0."""
        try:
            stuck = list(Operation.objects.filter(worker=self.name, status=Operation.Status.RUNNING)
                         .values_list("request_id", "training_run_id"))
            Operation.objects.filter(worker=self.name, status=Operation.Status.RUNNING).update(
                status=Operation.Status.PENDING, worker="", lease_expires_at=None)
            runs = set(TrainingRun.objects.filter(lease_owner=self.name).values_list("id", flat=True))
            TrainingRun.objects.filter(lease_owner=self.name).update(lease_owner="", lease_expires_at=None)
            logger.error("worker %s: operation(s) %s still running after %.0f s; handed back to other workers",
                         self.name, ", ".join(r for r, _ in stuck) or "none", timeout)
            for run_id in runs | {run for _, run in stuck if run}:
                queues.enqueue_drain(run_id, force=True)
            for request_id, run in stuck:
                if run is None:
                    queues.enqueue_sample(request_id, force=True)
        except Exception:  # exiting matters more; leases expire on their own
            logger.exception("worker %s: could not hand back its operations; their leases will expire", self.name)
        self.stop()
        exit_worker(self.name, 0, self.shutdown_started)

    def _on_finished(self, sender: object, operation: Operation, **kwargs: object) -> None:
        queues.publish_done(operation.request_id)

    # -- jobs -------------------------------------------------------------

    def drain(self, run_id: str) -> None:
        """Execute the run's ready operations in seq order while holding its lease.

        The worker also takes the leases of other runs of the same base model
        that have work waiting (companions, see ``_companions``) and batches
        their ready forward/forward_backward operations with this run's, picked
        round-robin by tenant (``dispatch.scheduler``), as the embedded lanes do.

        After letting the leases go it looks once more: an operation that arrived
        while it held a lease had its drain job skip (lease busy), so this
        worker must not leave it behind.
        """
        try:
            queues.connection().delete(self.backend.key("drain", run_id))
        except redis.RedisError:
            pass
        while True:
            if not acquire_run(run_id, self.name, self.backend.lease_s):
                return  # another worker drains it and re-checks when it lets go
            held = [run_id, *self._companions(run_id)]
            try:
                for held_id in held:
                    self._set_owner(held_id)
                self._drain_held(held)
            except Superseded as exc:
                logger.warning("%s; forgetting this worker's copy of the run", exc)
                self._evict(run_id)
                return
            finally:
                for held_id in held:
                    release_run_lease(held_id, self.name)
            for companion in held[1:]:
                self._queue_if_pending(companion)
            run = TrainingRun.objects.filter(pk=run_id).first()
            if run is None or self._next_op(run) is None:
                return
            if self.stopping:
                self._hand_over(run_id)
                return

    def _companions(self, run_id: str) -> list[str]:
        """Other runs of ``run_id``'s base model with work waiting, whose leases this worker took.

        Only runs whose state is here, or on no live worker, are taken: pulling a
        run away from the live worker holding it would cost a restore there and here.
        """
        limit = int(getattr(settings, "TUFT_TRAIN_BATCH_MAX", 16)) - 1
        model = TrainingRun.objects.filter(pk=run_id).values_list("base_model", flat=True).first()
        if limit <= 0 or model is None:
            return []
        candidates = (
            TrainingRun.objects.filter(base_model=model, released=False, operations__status=Operation.Status.PENDING)
            .exclude(pk=run_id)
            .filter(Q(lease_owner="") | Q(lease_owner=self.name) | Q(lease_expires_at__lt=Now()))
            .values_list("id", flat=True).distinct()[: 4 * limit]
        )
        taken: list[str] = []
        for other in candidates:
            if len(taken) >= limit:
                break
            if self._state_elsewhere(other) or not acquire_run(other, self.name, self.backend.lease_s):
                continue
            taken.append(other)
        return taken

    def _state_elsewhere(self, run_id: str) -> bool:
        """The run's state is in the memory of another live worker."""
        if run_id in self.local.next_seq:
            return False
        try:
            owner = queues.connection().get(self.backend.key("owner", run_id))
            return owner is not None and owner.decode() != self.name and queues.is_alive(self.backend, owner.decode())
        except redis.RedisError:
            return True  # cannot tell: leave it to its own drain job

    def _queue_if_pending(self, run_id: str) -> None:
        """A companion may have been skipped by its own drain job while this worker held it."""
        run = TrainingRun.objects.filter(pk=run_id).first()
        if run is None or self._next_op(run) is None:
            return
        try:
            if self.stopping:
                queues.connection().delete(self.backend.key("owner", run_id))
            queues.enqueue_drain(run_id, force=self.stopping)
        except redis.RedisError:
            pass  # the reaper queues it

    def sample(self, request_id: str) -> None:
        """Hand the request to the sample lane (decoded beside training, see ``SampleLane``)."""
        assert self.samples is not None, "start() first"
        try:
            op = Operation.objects.select_related("sampling_session").get(pk=request_id)
            work = scheduling_work(op, None)
        except Operation.DoesNotExist:
            work = Work(request_id, tenant="")  # the executor logs that it vanished
        finally:
            close_old_connections()
        self.samples.submit(work)

    def _delete_sample_marker(self, request_id: str) -> None:
        try:
            queues.connection().delete(self.backend.key("sample", request_id))
        except redis.RedisError:
            pass

    def _sample_companions(self, lead: list[str]) -> list[str]:
        """Other pending samples of the lead batch's base model to decode with it, fairly by tenant.

        Why: RQ hands this worker one sample job at a time, so the lane alone would
        often start a batch of one while the other tenants' jobs still wait in Redis.
        Pending samples are claimed from the database instead (pending to running,
        like any operation), so their own jobs find them taken and do nothing; if
        this worker dies, the reaper queues each of them again. At most
        ``TUFT_SAMPLE_BATCH_MAX`` samples and ``TUFT_SAMPLE_BATCH_TOKENS`` (prompt +
        max new) tokens in all, picked round-robin by tenant (``dispatch.scheduler``).
        """
        limits = LaneLimits.from_settings()
        try:
            ops = list(Operation.objects.select_related("sampling_session").filter(
                pk__in=lead, kind=Operation.Kind.SAMPLE, status=Operation.Status.PENDING))
            if not ops or ops[0].sampling_session is None or len(lead) >= limits.sample_batch_max or self.stopping:
                return []
            others = (
                Operation.objects.select_related("sampling_session")
                .filter(kind=Operation.Kind.SAMPLE, status=Operation.Status.PENDING,
                        sampling_session__base_model=ops[0].sampling_session.base_model)
                .exclude(pk__in=lead).order_by("created_at")[: 4 * limits.sample_batch_max]
            )
            scheduler = FairScheduler()
            for op in ops:  # added first: they lead the batch
                scheduler.add(scheduling_work(op, None))
            for other in others:
                scheduler.add(scheduling_work(other, None))
            batch = scheduler.next_batch(limits.sample_batch_tokens, limits.sample_batch_max)
            return [work.request_id for work in batch if work.request_id not in lead]
        finally:
            close_old_connections()

    def _hand_over(self, run_id: str) -> None:
        """Queue the run's remaining operations for another worker (this one is stopping)."""
        logger.warning("worker %s: stopping; handing run %s to other workers", self.name, run_id)
        try:
            queues.connection().delete(self.backend.key("owner", run_id))
            queues.enqueue_drain(run_id, force=True)
        except redis.RedisError:
            pass  # the reaper queues it once this worker's lease has gone

    def _set_owner(self, run_id: str) -> None:
        try:
            queues.connection().set(self.backend.key("owner", run_id), self.name, ex=7 * 24 * 3600)
        except redis.RedisError:  # only an affinity hint
            pass

    def _drain_held(self, held: list[str]) -> None:
        """Run the held runs' ready operations, a batch at a time, until none is ready.

        ``held[0]`` is the run this drain job is for: losing its lease raises
        ``Superseded``; a companion whose lease is lost is just dropped.
        """
        order = list(held)  # the runs in their turn; served ones go to the back
        while not self.stopping:  # warm shutdown: finish the current batch only (drain hands the rest over)
            ready: list[Operation] = []
            for run_id in list(order):
                # Extend the lease before each operation; never act on a run another worker took.
                if not acquire_run(run_id, self.name, self.backend.lease_s):
                    if run_id == held[0]:
                        raise Superseded(f"worker {self.name} lost the lease of run {run_id}")
                    order.remove(run_id)
                    self._evict(run_id)
                    continue
                run = TrainingRun.objects.filter(pk=run_id).first()
                op = self._next_op(run) if run is not None else None
                if op is None:
                    continue
                if op.status == Operation.Status.RUNNING and not self._take_over(op):
                    continue  # failed after too many attempts: its run's next op is looked at next round
                ready.append(op)
            if not ready:
                return
            batch = self._pick(ready)
            self._execute(batch, primary=held[0])
            served = {op.training_run_id for op in batch}
            order = [r for r in order if r not in served] + [r for r in order if r in served]

    def _pick(self, ready: list[Operation]) -> list[Operation]:
        """What runs next: round-robin by tenant, ready forward_backwards of several runs together."""
        scheduler = FairScheduler()
        by_id = {op.request_id: op for op in ready}
        for op in ready:
            run = op.training_run
            assert run is not None
            scheduler.add(scheduling_work(op, run))
        batch = scheduler.next_batch(int(getattr(settings, "TUFT_TRAIN_BATCH_TOKENS", 8192)),
                                     int(getattr(settings, "TUFT_TRAIN_BATCH_MAX", 16)))
        return [by_id[work.request_id] for work in batch]

    def _execute(self, batch: list[Operation], primary: str) -> None:
        with self.lock:
            if len(batch) > 1:
                logger.debug("worker %s: one pass for %d operations of runs %s", self.name, len(batch),
                             ", ".join(str(op.training_run_id) for op in batch))
                self.executor.execute_batch([op.request_id for op in batch])  # records each outcome
            else:
                try:
                    self.executor.execute(batch[0].request_id)
                except Superseded:
                    if batch[0].training_run_id == primary:
                        raise
                    logger.warning("worker %s lost companion run %s", self.name, batch[0].training_run_id)
        for op in batch:
            self._after(op)

    def _next_op(self, run: TrainingRun) -> Operation | None:
        """The operation to run next under the seq rule (``dispatch.ordering.next_in_order``)."""
        op = Operation.objects.filter(training_run=run, seq_id=run.next_seq_id).first()
        if op is not None:
            return op  # pending, a stale RUNNING one, or failed at submission (just advances)
        lowest = (
            Operation.objects.filter(training_run=run, status__in=UNFINISHED).order_by("seq_id").first()
        )
        if lowest is None or lowest.seq_id is None:
            return None
        # The run has waited for its next seq at least since this later operation arrived.
        waited = (timezone.now() - lowest.created_at).total_seconds()
        seq = next_in_order(run.next_seq_id, [lowest.seq_id], waited, self.gap_timeout_s)
        if seq is None:
            return None  # the missing seq may still come; the reaper looks again later
        if seq > run.next_seq_id:
            logger.warning("run %s: seq %d never arrived in %.0fs; skipping to %d",
                           run.id, run.next_seq_id, self.gap_timeout_s, seq)
            TrainingRun.objects.filter(pk=run.pk, lease_owner=self.name).update(next_seq_id=seq)
        return lowest

    def _take_over(self, op: Operation) -> bool:
        """A RUNNING op found while holding the run's lease: its worker died mid-way."""
        if op.attempts >= MAX_ATTEMPTS:
            logger.error("operation %s (%s) killed its worker %d times; failing it", op.request_id, op.kind, op.attempts)
            _finish(op, error=WORKER_DIED.format(attempts=op.attempts), category="server",
                    guard=lambda o, ok: self._guard_run(o))
            return False
        logger.warning("operation %s (%s) was left running by worker %s; running it again",
                       op.request_id, op.kind, op.worker or "?")
        Operation.objects.filter(pk=op.pk, status=Operation.Status.RUNNING, worker=op.worker).update(
            status=Operation.Status.PENDING, worker="", lease_expires_at=None
        )
        return True

    def _guard_run(self, op: Operation) -> None:
        if not TrainingRun.objects.select_for_update().filter(pk=op.training_run_id, lease_owner=self.name).exists():
            raise Superseded(f"worker {self.name} lost the lease of run {op.training_run_id}")

    def _after(self, op: Operation) -> None:
        """Keep ``local`` in step with what this worker's memory now holds of the run."""
        run_id, seq = op.training_run_id, op.seq_id
        if run_id is None or seq is None:
            return
        done = Operation.objects.filter(pk=op.pk).values_list("status", "error_category").first()
        if done is None:
            return
        status, category = done
        if status in UNFINISHED:  # not recorded by this worker (it lost the run): its copy may be stale
            self._evict(run_id)
            return
        changes_state = op.kind in (Operation.Kind.FORWARD_BACKWARD, Operation.Kind.CREATE_MODEL,
                                    Operation.Kind.LOAD_WEIGHTS, Operation.Kind.OPTIM_STEP)
        if status == Operation.Status.FAILED and changes_state and category != "user":
            # The engine may hold a half-applied change: rebuild from the checkpoint next time.
            self._evict(run_id)
        elif status in (Operation.Status.COMPLETED, Operation.Status.FAILED) and self.local.valid_for(run_id, seq):
            self.local.mark(run_id, seq + 1)
            if status == Operation.Status.COMPLETED and op.kind in (
                Operation.Kind.CREATE_MODEL, Operation.Kind.LOAD_WEIGHTS, Operation.Kind.OPTIM_STEP
            ):
                run = TrainingRun.objects.filter(pk=run_id).first()
                if run is not None:
                    prune_state(run, keep_seq=run.state_seq)

    def _evict(self, run_id: str) -> None:
        with self.lock:
            self.local.forget(run_id)
            self.executor.release_run(run_id)

    # -- maintenance --------------------------------------------------------

    def _maintain(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self._tick()
            except Exception:
                logger.exception("worker maintenance failed; retrying next tick")
            finally:
                db_connection.close()

    def _tick(self) -> None:
        renew_leases(self.name, self.backend.lease_s)
        try:
            conn = queues.connection()
            conn.set(self.backend.key("alive", self.name), self.identity, ex=max(1, int(self.backend.lease_s)))
            # One reaper per tick across all workers is enough.
            if conn.set(self.backend.key("reaper"), self.name, nx=True, px=int(self.tick_s * 900)):
                Reaper(self.backend).run()
        except redis.RedisError as exc:
            logger.warning("Redis unavailable (%s); leases still renewed in the database", exc)
        self._evict_unused()

    def _evict_unused(self) -> None:
        """Free adapters of released runs and of runs idle for long (their state is on disk)."""
        held = list(self.local.last_used)
        if not held or not self.lock.acquire(blocking=False):
            return
        try:
            released = set(TrainingRun.objects.filter(id__in=held, released=True).values_list("id", flat=True))
            cutoff = time.monotonic() - self.idle_evict_s
            for run_id in held:
                if run_id in released or self.local.last_used.get(run_id, 0) < cutoff:
                    self.local.forget(run_id)
                    self.executor.release_run(run_id)
                    logger.info("worker %s freed run %s (%s)", self.name, run_id,
                                "released" if run_id in released else "idle")
        finally:
            self.lock.release()


def exit_worker(name: str, code: int, shutdown_started: float | None) -> None:
    """End the worker process once everything is committed.

    ``os._exit`` skips the interpreter's finalization, which can abort in
    torch's native threads ("terminate called without an active exception",
    status 134) while the maintenance thread is still alive.
    """
    took = f" {time.monotonic() - shutdown_started:.1f} s after the signal" if shutdown_started is not None else ""
    logger.info("worker %s stopped%s; exiting with status %d", name, took, code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
