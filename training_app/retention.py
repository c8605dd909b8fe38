"""Retention of operation rows: finished futures are deleted after a while.

Every request leaves an ``Operation`` row holding its request and result
(megabytes for a large forward_backward), so without a limit the database
grows with every step ever taken. The housekeeping thread
(``tuft_project.startup``) deletes finished operations older than
``TUFT_OPERATION_RETENTION_DAYS`` (default 7; 0 keeps them forever). A deleted
future answers 404 to ``retrieve_future``; the dashboard's loss curves and
sampling history lose those points; daily usage (``DailyUsage``) is kept.

Never deleted:

* unfinished operations (pending or running), whatever their age;
* operations a run's hand-off may replay (``workers.handoff.restore``
  re-runs the completed forward_backward operations after the run's
  ``state_seq``): every operation of an unreleased run after its
  ``state_seq``, or all of them while it has none yet.
"""

from __future__ import annotations

import datetime
import logging

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from training_app.models import Operation

logger = logging.getLogger(__name__)

# Rows per DELETE: short transactions, so SQLite writers are not held up.
BATCH = 500


def do_delete_old_operations(max_age: datetime.timedelta | None = None) -> int:
    """Delete finished operations older than ``max_age`` (default: the retention setting)."""
    if max_age is None:
        if settings.TUFT_OPERATION_RETENTION_DAYS <= 0:
            return 0
        max_age = datetime.timedelta(days=settings.TUFT_OPERATION_RETENTION_DAYS)
    cutoff = timezone.now() - max_age
    old = Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff)
    not_replayable = (
        Q(training_run__isnull=True)  # sampling
        | Q(training_run__released=True)
        | Q(training_run__state_seq__isnull=False, seq_id__lte=F("training_run__state_seq"))
    )
    candidates = Operation.objects.filter(
        old, not_replayable, status__in=[Operation.Status.COMPLETED, Operation.Status.FAILED]
    )
    deleted = 0
    while True:
        batch = list(candidates.values_list("pk", flat=True)[:BATCH])
        if not batch:
            break
        count, _ = Operation.objects.filter(pk__in=batch).delete()
        deleted += count
        if len(batch) < BATCH:
            break
    if deleted:
        logger.info("deleted %d finished operation(s) older than %s", deleted, max_age)
    return deleted
