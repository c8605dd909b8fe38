"""Start-up recovery and expiry of stored state."""

from __future__ import annotations

import logging
import shutil

from django.db import transaction
from django.utils import timezone

from sessions_app.models import ClientSession
from training_app.checkpoint_paths import absolute
from training_app.models import Checkpoint, Operation, TrainingRun

logger = logging.getLogger(__name__)

RESTART_ERROR = "server restarted before this operation finished; resubmit it"


def recover_after_restart() -> None:
    """Embedded mode without persistence: nothing in memory survived the restart.

    Unfinished futures fail with a clear error (they never hang), sessions of
    the previous process are closed, and their runs released; checkpoints on
    disk stay usable.
    """
    now = timezone.now()
    with transaction.atomic():
        failed = Operation.objects.filter(status__in=[Operation.Status.PENDING, Operation.Status.RUNNING]).update(
            status=Operation.Status.FAILED, error=RESTART_ERROR, error_category="server", finished_at=now
        )
        closed = ClientSession.objects.filter(status=ClientSession.Status.ACTIVE).update(
            status=ClientSession.Status.FINISHED, finish_reason="server restarted", finished_at=now
        )
        TrainingRun.objects.filter(released=False).update(released=True)
    if failed or closed:
        logger.warning("after restart: failed %d unfinished operation(s), closed %d session(s)", failed, closed)


def do_delete_expired_checkpoints() -> int:
    expired = list(Checkpoint.objects.filter(expires_at__lte=timezone.now()))
    for ckpt in expired:
        directory = absolute(ckpt.storage_path)
        ckpt.delete()
        shutil.rmtree(directory, ignore_errors=True)
    if expired:
        logger.info("deleted %d expired checkpoint(s)", len(expired))
    return len(expired)
