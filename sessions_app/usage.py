"""Usage accounting: per tenant and day, recorded as operations finish."""

from __future__ import annotations

from typing import Any

from django.db.models import F, Sum
from django.utils import timezone

from sessions_app.models import DailyUsage, Tenant


def record_operation_usage(op: Any, outcome: Any) -> None:
    """Add one finished operation to its tenant's usage of today.

    Sampling outcomes carry ``prefill_tokens``/``sampled_tokens`` in their
    result; training outcomes count ``num_tokens`` as training tokens.
    """
    today = timezone.now().date()
    row, _ = DailyUsage.objects.get_or_create(tenant_id=op.tenant_id, day=today)
    updates: dict[str, Any] = {"operations": F("operations") + 1}
    if outcome is None:
        updates["failed_operations"] = F("failed_operations") + 1
    elif op.kind == "sample":
        updates["prefill_tokens"] = F("prefill_tokens") + getattr(outcome, "prefill_tokens", 0)
        updates["sampled_tokens"] = F("sampled_tokens") + getattr(outcome, "sampled_tokens", 0)
    elif op.kind in ("forward_backward", "forward"):
        updates["training_tokens"] = F("training_tokens") + outcome.num_tokens
    DailyUsage.objects.filter(pk=row.pk).update(**updates)


def usage_today(tenant: Tenant) -> DailyUsage:
    row = DailyUsage.objects.filter(tenant=tenant, day=timezone.now().date()).first()
    return row if row is not None else DailyUsage(tenant=tenant, day=timezone.now().date())


def checkpoint_bytes(tenant: Tenant) -> int:
    from training_app.models import Checkpoint

    return int(Checkpoint.objects.filter(tenant=tenant).aggregate(total=Sum("size_bytes"))["total"] or 0)
