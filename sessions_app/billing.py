"""What the SDK's usage queries (``AdminClient.get_billing_usage``,
``get_current_checkpoint_storage_usage``) answer: the tenant's own figures.

Token usage comes from ``DailyUsage`` (the table behind quotas, the admin's
CSV export and the dashboard), so every view of usage agrees. It is kept per
UTC day, so the events are daily buckets (``bucket_start`` 00:00 to the next
00:00) of every day the asked window touches, not hourly ones. There are no
prices: cost fields stay null. Checkpoint storage is the current level, read
from the checkpoints themselves.
"""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta, timezone as dt_timezone
from typing import Any

from django.db.models import Count, Q, Sum
from django.utils import timezone

from sessions_app.models import DailyUsage, Tenant
from training_app.models import Checkpoint
from tuft_project.exceptions import BadRequest

logger = logging.getLogger(__name__)

MAX_WINDOW = timedelta(days=14)  # as the SDK documents for get_billing_usage
GIGABYTE = 1_000_000_000


def parse_window(starting_on: str | None, ending_before: str | None) -> tuple[datetime, datetime]:
    """The window of a usage query (RFC 3339); 400 for a missing, reversed, future or too long one."""
    if not starting_on or not ending_before:
        raise BadRequest("starting_on and ending_before are required (RFC 3339, e.g. 2026-07-13T00:00:00Z)")
    try:
        start, end = (datetime.fromisoformat(v.replace("Z", "+00:00")) for v in (starting_on, ending_before))
    except ValueError:
        raise BadRequest("starting_on and ending_before must be RFC 3339 datetimes") from None
    start, end = (v if v.tzinfo else v.replace(tzinfo=dt_timezone.utc) for v in (start, end))
    if end <= start:
        raise BadRequest("ending_before must be after starting_on")
    if end - start > MAX_WINDOW:
        raise BadRequest("the window may span at most 14 days")
    if start > timezone.now():
        raise BadRequest("starting_on must not be in the future")
    return start, end


def billing_events(tenant: Tenant, start: datetime, end: datetime) -> dict[str, Any]:
    """A ``BillingUsageResponse`` body: training, prefill and sampled tokens per day with usage."""
    utc_start, utc_end = start.astimezone(dt_timezone.utc), end.astimezone(dt_timezone.utc)
    first_day, last_day = utc_start.date(), (utc_end - timedelta(microseconds=1)).date()
    rows = DailyUsage.objects.filter(tenant=tenant, day__gte=first_day, day__lte=last_day).order_by("day")
    events = []
    for row in rows:
        bucket_start = datetime.combine(row.day, time(0), tzinfo=dt_timezone.utc)
        bucket = {"bucket_start": bucket_start.isoformat(), "bucket_end": (bucket_start + timedelta(days=1)).isoformat(),
                  "user_name": tenant.name}
        for kind, tokens, extra in (("training", row.training_tokens, {}),
                                    ("sampling_prefill", row.prefill_tokens, {"cached": False}),
                                    ("sampling_sample", row.sampled_tokens, {})):
            if tokens:
                events.append({**bucket, "event_info": {"type": kind, "token_count": tokens, **extra}})
    return {"data": events, "sessions": {}, "cost_data_through": None}


def checkpoint_storage(tenant: Tenant) -> dict[str, Any]:
    """A ``CurrentCheckpointStorageUsageResponse`` body: the tenant's unexpired checkpoints now."""
    live = Checkpoint.objects.filter(tenant=tenant).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
    totals = live.aggregate(n=Count("pk"), size=Sum("size_bytes"))
    size = int(totals["size"] or 0)
    item = {"user_name": tenant.name, "checkpoint_count": int(totals["n"] or 0), "size_bytes": size,
            "size_gigabytes": size / GIGABYTE}
    return {"data": [item], "effective_rate_usd_per_gigabyte_month": None}
