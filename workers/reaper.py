"""The distributed workers' reaper: queue again what no job will pick up.

One live worker runs it per maintenance tick (``WorkerRuntime._tick``).
"""

from __future__ import annotations

import logging

from django.db.models import Q
from django.db.models.functions import Now
from rq import Queue

from dispatch import queues
from training_app.models import Operation, TrainingRun
from workers.executor import _finish
from workers.handoff import MAX_ATTEMPTS, UNFINISHED, WORKER_DIED, prune_state

logger = logging.getLogger(__name__)


class Reaper:
    """Finds work that no job will pick up and queues it again.

    Covers jobs lost with a restarted Redis, enqueues that failed while Redis was
    down, operations of SIGKILLed workers (their leases ran out), personal
    queues of dead workers, seq gaps past their timeout, and the automatic
    checkpoints of released runs.
    """

    def __init__(self, backend: queues.Backend) -> None:
        self.backend = backend

    def run(self) -> None:
        self._training()
        self._samples()
        self._dead_queues()
        self._released_state()

    def _training(self) -> None:
        ids = set(
            Operation.objects.filter(status__in=UNFINISHED, training_run__isnull=False)
            .values_list("training_run_id", flat=True)
        )
        if not ids:
            return
        free = TrainingRun.objects.filter(id__in=ids).filter(Q(lease_owner="") | Q(lease_expires_at__lt=Now()))
        for run_id in free.values_list("id", flat=True):
            if queues.enqueue_drain(run_id):
                logger.info("reaper: queued a drain of run %s", run_id)

    def _samples(self) -> None:
        stale = Operation.objects.filter(
            kind=Operation.Kind.SAMPLE, status=Operation.Status.RUNNING, lease_expires_at__lt=Now()
        )
        for op in stale:
            if op.attempts >= MAX_ATTEMPTS:
                _finish(op, error=WORKER_DIED.format(attempts=op.attempts), category="server")
                continue
            Operation.objects.filter(pk=op.pk, status=Operation.Status.RUNNING, worker=op.worker).update(
                status=Operation.Status.PENDING, worker="", lease_expires_at=None
            )
            logger.warning("reaper: sample %s was left running by worker %s; queued again", op.request_id, op.worker)
            queues.enqueue_sample(op.request_id, force=True)
        for request_id in Operation.objects.filter(
            kind=Operation.Kind.SAMPLE, status=Operation.Status.PENDING
        ).values_list("request_id", flat=True):
            queues.enqueue_sample(request_id)

    def _dead_queues(self) -> None:
        """Drop the personal queues of dead workers; their runs are queued again on the shared one.

        Their jobs are not read (that needs their serializer and they only name
        runs): ``enqueue_drain`` sees that a run's marker points at a dead
        worker's queue and queues the run afresh.
        """
        prefix = self.backend.personal_queue("")
        conn = queues.connection()
        for queue in Queue.all(connection=conn):
            if queue.name.startswith(prefix) and not queues.is_alive(self.backend, queue.name[len(prefix):]):
                queue.delete(delete_jobs=True)
                logger.info("reaper: removed the queue of dead worker %s", queue.name[len(prefix):])

    def _released_state(self) -> None:
        for run in TrainingRun.objects.filter(released=True, state_seq__isnull=False, lease_owner=""):
            prune_state(run, keep_seq=None)
            TrainingRun.objects.filter(pk=run.pk).update(state_seq=None)
