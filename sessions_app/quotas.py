"""Per-tenant limits, enforced when work is submitted.

Which limits apply: the tenant's own ``Quota`` row if it has one, otherwise the
``DefaultQuota`` (so a new tenant starts under the default); an empty field is
unlimited.

Errors are 403 ``quota_exceeded`` (``QuotaExceeded``; the SDK does not retry
it) for limits that waiting will not lift. Never 409 or 402, which the SDK
retries for minutes; 429 is kept for back-pressure the client should wait out
(see ``sampling_app.actions``). Checks made inside an operation (token budget
of ``forward_backward``, checkpoint storage) fail that future with category
``user`` and the same message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction

from sampling_app.models import SamplingSession
from sessions_app.models import DefaultQuota, Quota, QuotaLimits, Tenant
from sessions_app.usage import checkpoint_bytes, usage_today
from training_app.models import Checkpoint, TrainingRun
from tuft_project.exceptions import QuotaExceeded

logger = logging.getLogger(__name__)


def quota_for(tenant: Tenant) -> QuotaLimits:
    """The limits that apply to ``tenant`` now: its own quota, else the default."""
    own = Quota.objects.filter(tenant=tenant).first()
    return own if own is not None else DefaultQuota.load()


def lock_tenant(tenant: Tenant) -> None:
    """Hold ``tenant``'s row lock until the current transaction ends.

    A limit on how many rows a tenant may have (training runs, sampling
    sessions, pending samples) is a count, then an insert. The API serves
    requests on several threads and workers insert too, so without one lock per
    tenant concurrent requests all pass the count at once and overshoot the
    limit. Count and insert after this call, in the same transaction.

    PostgreSQL: FOR NO KEY UPDATE, which waits for the other holders of this
    lock but not for (nor blocks) the key-share lock that inserting any row
    referencing the tenant takes, so the tenant's other writes do not queue
    behind it. SQLite has no row locks: its IMMEDIATE transactions
    (settings.py) already serialize every writer.
    """
    if not transaction.get_connection().in_atomic_block:
        raise transaction.TransactionManagementError("lock_tenant needs a transaction: the lock ends with it")
    list(Tenant.objects.select_for_update(no_key=True).filter(pk=tenant.pk).values_list("pk", flat=True))


def _refuse(tenant: Tenant, message: str) -> QuotaExceeded:
    # Failed futures carry only the message, so it says by itself that a quota refused it.
    logger.info("quota refused for tenant %s: %s", tenant.pk, message)
    return QuotaExceeded(f"quota exceeded: {message}")


def check_training_run_quota(tenant: Tenant, rank: int) -> None:
    """Call under ``lock_tenant``, in the transaction that then inserts the run."""
    quota = quota_for(tenant)
    if quota.max_lora_rank is not None and rank > quota.max_lora_rank:
        raise _refuse(tenant, f"LoRA rank {rank} exceeds this tenant's maximum of {quota.max_lora_rank}")
    if quota.max_training_runs is not None:
        active = TrainingRun.objects.filter(tenant=tenant, released=False).count()
        if active >= quota.max_training_runs:
            raise _refuse(
                tenant,
                f"this tenant already has {active} active training runs (limit {quota.max_training_runs}); "
                "close a session to free one",
            )


def check_sampling_session_quota(tenant: Tenant) -> None:
    """Call under ``lock_tenant``, in the transaction that then inserts the sampling session.

    (``training_app.handlers`` also calls it unlocked, to refuse before writing a checkpoint.)
    """
    quota = quota_for(tenant)
    if quota.max_sampling_sessions is not None:
        active = SamplingSession.objects.filter(tenant=tenant, session__status="active").count()
        if active >= quota.max_sampling_sessions:
            raise _refuse(
                tenant,
                f"this tenant already has {active} sampling sessions in active sessions "
                f"(limit {quota.max_sampling_sessions}); close a session to free one",
            )


def check_checkpoint_storage(tenant: Tenant) -> None:
    """Before a save: refuse at once when the storage quota is already used up."""
    quota = quota_for(tenant)
    if quota.max_checkpoint_bytes is not None:
        used = checkpoint_bytes(tenant)
        if used >= quota.max_checkpoint_bytes:
            raise _refuse(
                tenant,
                f"checkpoint storage quota exhausted ({used} of {quota.max_checkpoint_bytes} bytes); "
                "delete checkpoints to free space",
            )


def check_checkpoint_fits(tenant: Tenant, tinker_path: str, size: int) -> None:
    """After a save wrote ``size`` bytes: refuse if keeping it would exceed the quota.

    A checkpoint's size is only known once written, so the caller removes the
    files when this raises. An overwritten checkpoint's old bytes do not count.
    """
    quota = quota_for(tenant)
    if quota.max_checkpoint_bytes is None:
        return
    replaced = Checkpoint.objects.filter(tenant=tenant, tinker_path=tinker_path).values_list("size_bytes", flat=True)
    total = checkpoint_bytes(tenant) - sum(replaced) + size
    if total > quota.max_checkpoint_bytes:
        raise _refuse(
            tenant,
            f"checkpoint of {size} bytes would take storage to {total} bytes, over the quota of "
            f"{quota.max_checkpoint_bytes}; delete checkpoints to free space",
        )


def check_token_budget(tenant: Tenant, kind: str, tokens: int) -> None:
    """``kind`` is "train" or "sample"; the budget resets at 00:00 UTC.

    Counted against finished work: requests already in flight when the budget
    runs out still complete, so usage can pass the budget by at most those.
    """
    quota = quota_for(tenant)
    limit = quota.train_tokens_per_day if kind == "train" else quota.sample_tokens_per_day
    if limit is None:
        return
    usage = usage_today(tenant)
    used = usage.training_tokens if kind == "train" else usage.prefill_tokens + usage.sampled_tokens
    if used + tokens > limit:
        raise _refuse(
            tenant,
            f"daily {kind} token budget exhausted ({used} used + {tokens} requested > {limit}); "
            "resets at 00:00 UTC",
        )


@dataclass(frozen=True)
class QuotaLine:
    """One limit next to what the tenant uses of it now (for the dashboard)."""

    name: str
    label: str
    used: int
    limit: int | None


def quota_status(tenant: Tenant) -> list[QuotaLine]:
    quota = quota_for(tenant)
    today = usage_today(tenant)
    return [
        QuotaLine("max_training_runs", "Active training runs",
                  TrainingRun.objects.filter(tenant=tenant, released=False).count(), quota.max_training_runs),
        QuotaLine("max_sampling_sessions", "Sampling sessions",
                  SamplingSession.objects.filter(tenant=tenant, session__status="active").count(),
                  quota.max_sampling_sessions),
        QuotaLine("max_checkpoint_bytes", "Checkpoint bytes", checkpoint_bytes(tenant), quota.max_checkpoint_bytes),
        QuotaLine("train_tokens_per_day", "Training tokens today", today.training_tokens, quota.train_tokens_per_day),
        QuotaLine("sample_tokens_per_day", "Sampling tokens today", today.prefill_tokens + today.sampled_tokens,
                  quota.sample_tokens_per_day),
    ]
