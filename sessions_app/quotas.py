"""Per-tenant limits, enforced when work is submitted.

Errors are 403 ``quota_exceeded`` (not retried by the SDK) for limits that
waiting will not lift; never 409 or 402, which the SDK retries for minutes.
"""

from __future__ import annotations

from sessions_app.models import Quota, Tenant
from tuft_project.exceptions import QuotaExceeded


def quota_for(tenant: Tenant) -> Quota:
    quota = Quota.objects.filter(tenant=tenant).first()
    return quota if quota is not None else Quota.default_for(tenant)


def check_training_run_quota(tenant: Tenant, rank: int) -> None:
    from training_app.models import TrainingRun

    quota = quota_for(tenant)
    if quota.max_lora_rank is not None and rank > quota.max_lora_rank:
        raise QuotaExceeded(f"LoRA rank {rank} exceeds this tenant's maximum of {quota.max_lora_rank}")
    if quota.max_training_runs is not None:
        active = TrainingRun.objects.filter(tenant=tenant, released=False).count()
        if active >= quota.max_training_runs:
            raise QuotaExceeded(
                f"this tenant already has {active} active training runs (limit {quota.max_training_runs}); "
                "close a session to free one"
            )


def check_sampling_session_quota(tenant: Tenant) -> None:
    from sampling_app.models import SamplingSession

    quota = quota_for(tenant)
    if quota.max_sampling_sessions is not None:
        active = SamplingSession.objects.filter(tenant=tenant, session__status="active").count()
        if active >= quota.max_sampling_sessions:
            raise QuotaExceeded(
                f"this tenant already has {active} sampling sessions in active sessions "
                f"(limit {quota.max_sampling_sessions})"
            )


def check_checkpoint_storage(tenant: Tenant) -> None:
    from sessions_app.usage import checkpoint_bytes

    quota = quota_for(tenant)
    if quota.max_checkpoint_bytes is not None:
        used = checkpoint_bytes(tenant)
        if used >= quota.max_checkpoint_bytes:
            raise QuotaExceeded(
                f"checkpoint storage quota exhausted ({used} of {quota.max_checkpoint_bytes} bytes); "
                "delete checkpoints to free space"
            )


def check_token_budget(tenant: Tenant, kind: str, tokens: int) -> None:
    """``kind`` is "train" or "sample"; the budget resets at 00:00 UTC."""
    from sessions_app.usage import usage_today

    quota = quota_for(tenant)
    limit = quota.train_tokens_per_day if kind == "train" else quota.sample_tokens_per_day
    if limit is None:
        return
    usage = usage_today(tenant)
    used = usage.training_tokens if kind == "train" else usage.prefill_tokens + usage.sampled_tokens
    if used + tokens > limit:
        raise QuotaExceeded(
            f"daily {kind} token budget exhausted ({used} used + {tokens} requested > {limit}); resets at 00:00 UTC"
        )
