"""Start-up recovery and expiry of stored state."""

from __future__ import annotations

import logging

import redis
from django.db import transaction
from django.utils import timezone

from dispatch import queues
from dispatch.queues import get_backend
from sessions_app.models import ClientSession
from training_app.checkpoint_deletion import do_delete_checkpoints
from training_app.models import Checkpoint, Operation, TrainingRun

logger = logging.getLogger(__name__)

RESTART_ERROR = "server restarted before this operation finished; resubmit it"


def recover_after_restart() -> None:
    """What a starting API server does with the previous process's unfinished work.

    Persistence mode ``redis_url`` (distributed): everything is in the database
    and workers hold the run state, so nothing is lost: sessions, runs,
    sampling sessions and futures carry on, and pending operations are queued
    again in case Redis lost them. Mode ``disabled``: see ``fail_unfinished``.
    """
    backend = get_backend()
    if backend is not None and backend.persistent:
        requeue_unfinished()
    else:
        fail_unfinished()


def requeue_unfinished() -> None:
    """Queue a drain of every run with unfinished operations and every pending sample.

    Duplicates of jobs Redis still holds are harmless (a drain with nothing to
    do returns; a sample already claimed is skipped). Redis being down is fine
    too: the workers' reaper queues them once it is back.
    """
    runs = set(
        Operation.objects.filter(status__in=[Operation.Status.PENDING, Operation.Status.RUNNING],
                                 training_run__isnull=False).values_list("training_run_id", flat=True)
    )
    samples = list(Operation.objects.filter(kind=Operation.Kind.SAMPLE, status=Operation.Status.PENDING)
                   .values_list("request_id", flat=True))
    try:
        for run_id in runs:
            queues.enqueue_drain(run_id, force=True)
        for request_id in samples:
            queues.enqueue_sample(request_id)
    except redis.RedisError as exc:
        logger.warning("Redis unavailable at start-up (%s); workers re-queue pending work when it is back", exc)
    if runs or samples:
        logger.info("after restart: resumed %d run(s) with unfinished operations and %d pending sample(s)",
                    len(runs), len(samples))


def fail_unfinished(error: str = RESTART_ERROR, reason: str = "server restarted") -> int:
    """Persistence disabled: nothing in memory survived the restart (or survives this shutdown).

    Unfinished futures fail with a clear error (they never hang), sessions of
    the previous process are closed, and their runs released; checkpoints on
    disk stay usable. Returns how many futures failed.
    """
    now = timezone.now()
    with transaction.atomic():
        failed = Operation.objects.filter(status__in=[Operation.Status.PENDING, Operation.Status.RUNNING]).update(
            status=Operation.Status.FAILED, error=error, error_category="server", finished_at=now
        )
        closed = ClientSession.objects.filter(status=ClientSession.Status.ACTIVE).update(
            status=ClientSession.Status.FINISHED, finish_reason=reason, finished_at=now
        )
        TrainingRun.objects.filter(released=False).update(released=True)
    if failed or closed:
        logger.warning("%s: failed %d unfinished operation(s), closed %d session(s)", reason, failed, closed)
    return failed


def do_delete_expired_checkpoints() -> int:
    expired = list(Checkpoint.objects.filter(expires_at__lte=timezone.now()))
    do_delete_checkpoints(expired)
    if expired:
        logger.info("deleted %d expired checkpoint(s)", len(expired))
    return len(expired)
