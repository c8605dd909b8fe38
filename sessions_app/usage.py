"""Usage accounting: per tenant and (UTC) day, recorded as work completes.

Tokens and operation counts are added when an operation finishes
(``record_operation_usage``, called by the executor inside the transaction
that records the outcome). Checkpoint storage is a level, not a flow: the
day's row holds the bytes stored after the last checkpoint change that day
(``record_checkpoint_storage``, run on every checkpoint save or delete).
"""

from __future__ import annotations

import csv
import logging
from typing import Any, Iterable, TextIO

from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from sessions_app.models import DailyUsage, Tenant
from training_app.models import Checkpoint

logger = logging.getLogger(__name__)


def record_operation_usage(op: Any, outcome: Any) -> None:
    """Add one finished operation to its tenant's usage of today.

    Sampling outcomes carry ``prefill_tokens``/``sampled_tokens`` in their
    result; training outcomes count ``num_tokens`` as training tokens.
    """
    today = timezone.now().date()
    updates: dict[str, Any] = {"operations": F("operations") + 1}
    if outcome is None:
        updates["failed_operations"] = F("failed_operations") + 1
    elif op.kind == "sample":
        updates["prefill_tokens"] = F("prefill_tokens") + getattr(outcome, "prefill_tokens", 0)
        updates["sampled_tokens"] = F("sampled_tokens") + getattr(outcome, "sampled_tokens", 0)
    elif op.kind in ("forward_backward", "forward"):
        updates["training_tokens"] = F("training_tokens") + outcome.num_tokens
    # One statement when today's row exists (all but the tenant's first operation of
    # the day): this runs on the training lane once per operation.
    if not DailyUsage.objects.filter(tenant_id=op.tenant_id, day=today).update(**updates):
        row, _ = DailyUsage.objects.get_or_create(tenant_id=op.tenant_id, day=today)
        DailyUsage.objects.filter(pk=row.pk).update(**updates)


def record_checkpoint_storage(tenant_id: int) -> None:
    """Store the tenant's current checkpoint bytes in today's usage row."""
    today = timezone.now().date()
    total = _checkpoint_bytes_of(tenant_id)
    row, _ = DailyUsage.objects.get_or_create(tenant_id=tenant_id, day=today)
    DailyUsage.objects.filter(pk=row.pk).update(checkpoint_bytes=total)


def on_checkpoint_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    """post_save / post_delete receiver for ``Checkpoint`` (connected in ``SessionsAppConfig.ready``)."""
    origin = kwargs.get("origin")
    if isinstance(origin, Tenant) or getattr(origin, "model", None) is Tenant:
        return  # the tenant itself is being deleted: a new usage row would block that delete
    try:
        with transaction.atomic():  # a savepoint: a failure here must not poison the caller's transaction
            record_checkpoint_storage(instance.tenant_id)
    except Exception:  # bookkeeping must never fail the save or delete that triggered it
        logger.exception("could not record checkpoint storage of tenant %s", instance.tenant_id)


def usage_today(tenant: Tenant) -> DailyUsage:
    row = DailyUsage.objects.filter(tenant=tenant, day=timezone.now().date()).first()
    return row if row is not None else DailyUsage(tenant=tenant, day=timezone.now().date())


def _checkpoint_bytes_of(tenant_id: int) -> int:
    return int(Checkpoint.objects.filter(tenant_id=tenant_id).aggregate(total=Sum("size_bytes"))["total"] or 0)


def checkpoint_bytes(tenant: Tenant) -> int:
    """Bytes of every checkpoint the tenant holds now."""
    return _checkpoint_bytes_of(tenant.pk)


CSV_COLUMNS = (
    "day", "tenant", "training_tokens", "prefill_tokens", "sampled_tokens",
    "checkpoint_bytes", "operations", "failed_operations",
)


def write_usage_csv(rows: Iterable[DailyUsage], out: TextIO) -> None:
    """Write usage rows as CSV (one line per tenant and day, ``CSV_COLUMNS``)."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([
            row.day.isoformat(), row.tenant.name, row.training_tokens, row.prefill_tokens, row.sampled_tokens,
            row.checkpoint_bytes, row.operations, row.failed_operations,
        ])
