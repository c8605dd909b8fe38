"""Sampling sessions and sample requests."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from sampling_app.models import SamplingSession
from sessions_app.models import ClientSession, Tenant
from sessions_app.quotas import check_sampling_session_quota, check_token_budget, lock_tenant
from training_app.actions import _enqueue_on_commit, access_readable_checkpoint, new_request_id
from training_app.models import Checkpoint, Operation
from tuft_project.exceptions import ApiError, NotFound, RateLimited

logger = logging.getLogger(__name__)


def access_sampling_session(tenant: Tenant, sampler_id: str) -> SamplingSession:
    sampler = SamplingSession.objects.filter(tenant=tenant, id=sampler_id).first()
    if sampler is None:
        raise NotFound(f"sampler {sampler_id!r} not found")
    return sampler


def checkpoint_still_readable(sampler: SamplingSession) -> bool:
    """Whether the sampler's tenant may still sample its checkpoint, read afresh.

    Access is granted when the sampler is created, and checked again for every
    sample request (at admission and at execution): another tenant's sampler
    stops working as soon as the owner unpublishes or deletes the checkpoint,
    or it expires. A sampler of the base model always may.
    """
    if not sampler.model_path:
        return True
    return (
        Checkpoint.objects.filter(pk=sampler.checkpoint_id)
        .filter(Q(tenant_id=sampler.tenant_id) | Q(public=True))
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        .exists()
    )


def check_create_sampling_session(
    tenant: Tenant, session: ClientSession, seq_id: int, base_model: str | None, model_path: str | None,
    base_model_names: set[str],
) -> SamplingSession:
    sampler_id = f"{session.id}:sample:{seq_id}"
    existing = SamplingSession.objects.filter(tenant=tenant, id=sampler_id).first()
    if existing is not None:
        return existing
    checkpoint = None
    if model_path:
        checkpoint = access_readable_checkpoint(tenant, model_path)
        base = checkpoint.training_run.base_model
        if base_model and base_model != base:
            raise ApiError(f"checkpoint {model_path} is for base model {base}, not {base_model}")
    elif base_model:
        if base_model not in base_model_names:
            raise ApiError(f"unknown base model {base_model!r}; supported: {', '.join(sorted(base_model_names))}")
        base = base_model
    else:
        raise ApiError("create_sampling_session needs model_path or base_model")
    return _create_within_quota(tenant, session, seq_id, base, model_path or "", checkpoint)


def check_create_sampling_session_for_checkpoint(session: ClientSession, seq_id: int,
                                                 ckpt: Checkpoint) -> SamplingSession:
    """The sampling session of save_weights_and_get_sampling_client (``training_app.handlers``)."""
    return _create_within_quota(session.tenant, session, seq_id, ckpt.training_run.base_model, ckpt.tinker_path,
                                ckpt)


def _create_within_quota(tenant: Tenant, session: ClientSession, seq_id: int, base_model: str, model_path: str,
                         checkpoint: Checkpoint | None) -> SamplingSession:
    """Insert the sampler unless the tenant is at max_sampling_sessions; one with this id is returned as it is."""
    sampler_id = f"{session.id}:sample:{seq_id}"
    with transaction.atomic():
        lock_tenant(tenant)  # count and insert as one step per tenant (see lock_tenant)
        # Again under the lock: a resubmission that raced its first try gets that
        # sampler, not a quota refusal (the sampler itself counts against it).
        existing = SamplingSession.objects.filter(tenant=tenant, id=sampler_id).first()
        if existing is not None:
            return existing
        check_sampling_session_quota(tenant)
        return SamplingSession.objects.create(
            id=sampler_id, tenant=tenant, session=session, sampling_session_seq_id=seq_id,
            base_model=base_model, model_path=model_path, checkpoint=checkpoint,
        )


def check_submit_sample(tenant: Tenant, sampler: SamplingSession, seq_id: int, request: dict[str, Any],
                        prompt_tokens: int, max_tokens: int) -> Operation:
    """Record a sample operation; a resubmitted ``(sampler, seq_id)`` gets the same future."""
    existing = Operation.objects.filter(sampling_session=sampler, seq_id=seq_id).first()
    if existing is not None:
        return existing
    if sampler.session.status != ClientSession.Status.ACTIVE:
        raise NotFound(f"sampler {sampler.id!r} belongs to a closed session")
    if not checkpoint_still_readable(sampler):
        raise NotFound(f"checkpoint {sampler.model_path} is no longer available (unpublished, deleted or expired)")
    check_token_budget(tenant, "sample", prompt_tokens + max_tokens)
    # Per-tenant back-pressure: 429 makes the SDK wait and resubmit this very
    # request (same seq_id), so nothing is dropped and one tenant's flood cannot
    # grow the queue without bound in front of everyone else's requests.
    with transaction.atomic():
        lock_tenant(tenant)  # count and insert as one step per tenant (see lock_tenant)
        # Again under the lock: a resubmission that raced its first try gets that
        # future, not a 429 (its own first try counts as pending).
        existing = Operation.objects.filter(sampling_session=sampler, seq_id=seq_id).first()
        if existing is not None:
            return existing
        pending = Operation.objects.filter(
            tenant=tenant, kind=Operation.Kind.SAMPLE,
            status__in=[Operation.Status.PENDING, Operation.Status.RUNNING],
        ).count()
        if pending >= settings.TUFT_MAX_PENDING_SAMPLES:
            logger.info("tenant %s has %d sample requests pending: answering 429", tenant.name, pending)
            raise RateLimited(f"{pending} sample requests already queued for this tenant; retry shortly",
                              retry_after=1)
        op = Operation.objects.create(
            request_id=new_request_id(), tenant=tenant, kind=Operation.Kind.SAMPLE,
            sampling_session=sampler, seq_id=seq_id, request=request,
        )
        _enqueue_on_commit(op, None)
    return op
