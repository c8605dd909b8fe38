"""Domain actions of training: runs, their ordered operations, checkpoints.

Zulip verbs: ``access_*`` fetch under a tenant check (another tenant's object is
a 404, never a 403, so ids leak nothing); ``check_*`` validate and then do;
``do_*`` write.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Callable

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from engine.checkpoints import lora_spec_from_checkpoint
from engine.types import UserInputError
from sessions_app.models import ClientSession, Tenant
from dispatch.scheduler import Work
from dispatch import registry as dispatch_registry
from sessions_app.quotas import check_training_run_quota, lock_tenant
from training_app import protocol
from training_app.checkpoint_paths import TinkerPath, absolute, parse_tinker_path
from dispatch.completions import completion_hub
from training_app.models import Checkpoint, Operation, TrainingRun
from training_app.signals import run_released
from tuft_project.exceptions import ApiError, NotFound
from tuft_project.runtime import get_config

logger = logging.getLogger(__name__)


# Name prefix of the checkpoints behind save_weights_and_get_sampling_client (see training_app.handlers).
EPHEMERAL_PREFIX = "auto-"


def new_request_id() -> str:
    return "req-" + secrets.token_hex(12)


def access_run(tenant: Tenant, run_id: str) -> TrainingRun:
    run = TrainingRun.objects.filter(tenant=tenant, id=run_id).first()
    if run is None:
        raise NotFound(f"training run {run_id!r} not found")
    return run


def access_operation(tenant: Tenant, request_id: str) -> Operation:
    op = Operation.objects.filter(tenant=tenant, request_id=request_id).first()
    if op is None:
        raise NotFound(f"future {request_id!r} not found")
    return op


def access_readable_checkpoint(tenant: Tenant, tinker_path: str) -> Checkpoint:
    """A checkpoint the tenant may load or sample: its own, or one published by anyone."""
    parse_tinker_path(tinker_path)
    ckpt = (
        Checkpoint.objects.filter(tinker_path=tinker_path)
        .filter(Q(tenant=tenant) | Q(public=True))
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        .select_related("training_run")
        .first()
    )
    if ckpt is None:
        raise NotFound(f"checkpoint {tinker_path!r} not found")
    return ckpt


def _enqueue_on_commit(op: Operation, run: TrainingRun | None) -> None:
    request_id = op.request_id
    work = scheduling_work(op, run)
    if run is not None:
        run_id, seq_id, next_seq = run.id, int(op.seq_id or 0), run.next_seq_id
        transaction.on_commit(
            lambda: dispatch_registry.get_dispatcher().submit_training(request_id, run_id, seq_id, next_seq, work)
        )
    else:
        transaction.on_commit(lambda: dispatch_registry.get_dispatcher().submit_sampling(request_id, work))


# Operations that the engine can run for several runs in one call (dispatch.scheduler batches them),
# by the engine call that takes them: only operations of one group share a batch.
BATCH_GROUPS = {
    Operation.Kind.FORWARD_BACKWARD: "pass",  # Engine.forward_backward_many
    Operation.Kind.FORWARD: "pass",
    Operation.Kind.OPTIM_STEP: "optim",  # Engine.optim_step_many
    Operation.Kind.SAMPLE: "sample",  # Engine.sample_many
}
BATCHABLE_KINDS = frozenset(BATCH_GROUPS)


def scheduling_work(op: Operation, run: TrainingRun | None) -> Work:
    """What the scheduler needs to know of ``op``: tenant, base model, token cost, batchability."""
    if run is not None:
        cost = protocol.count_body_tokens(bytes(op.request_blob)) if op.request_blob and not op.is_done else 0
        return Work(op.request_id, tenant=str(op.tenant_id), model=run.base_model, run_id=run.id,
                    seq_id=int(op.seq_id or 0), cost=cost,
                    batchable=op.kind in BATCHABLE_KINDS and not op.is_done, group=BATCH_GROUPS.get(op.kind, ""))
    sampler = op.sampling_session
    request = op.request or {}
    params = request.get("sampling_params") or {}
    prompt = sum(len(c.get("tokens") or []) for c in (request.get("prompt") or {}).get("chunks") or [])
    cost = prompt + int(params.get("max_tokens") or 0) * int(request.get("num_samples") or 1)
    return Work(op.request_id, tenant=str(op.tenant_id), model=sampler.base_model if sampler else "", cost=cost,
                group="sample")


def check_lora_config(base_model: str, rank: int, train_attn: bool, train_mlp: bool, train_unembed: bool) -> None:
    """Refuse (400, at submission) a LoRA the engine would refuse: a clear error, not a failed future."""
    spec = next((m for m in get_config().models if m.model_name == base_model), None)
    max_rank = spec.max_lora_rank if spec is not None else None
    if rank < 1 or (max_rank is not None and rank > max_rank):
        raise ApiError(f"LoRA rank {rank} is out of range for {base_model}: use 1..{max_rank}")
    if not (train_attn or train_mlp or train_unembed):
        raise ApiError("LoRA config trains nothing: enable train_attn, train_mlp or train_unembed")


def check_create_model(tenant: Tenant, session: ClientSession, body: Any, base_model_names: set[str]) -> Operation:
    """Record a new training run (seq 0 = its creation) or return the existing future."""
    run_id = f"{session.id}:train:{body.model_seq_id}"
    existing = Operation.objects.filter(tenant=tenant, training_run_id=run_id, seq_id=0).first()
    if existing is not None:
        return existing
    if body.base_model not in base_model_names:
        raise ApiError(f"unknown base model {body.base_model!r}; supported: {', '.join(sorted(base_model_names))}")
    lora = body.lora_config
    check_lora_config(body.base_model, lora.rank, lora.train_attn, lora.train_mlp, lora.train_unembed)
    optimizer_type = getattr(body.optimizer_config, "type", "adamw") if body.optimizer_config else "adamw"
    if optimizer_type != "adamw":
        raise ApiError(f"optimizer {optimizer_type!r} is not supported; use adamw")
    return _do_create_run(tenant, session, body, body.base_model, lora, Operation.Kind.CREATE_MODEL)


def check_submit_run_op(
    tenant: Tenant,
    run: TrainingRun,
    kind: str,
    seq_id: int,
    request: dict[str, Any],
    blob: bytes | None = None,
    validate: Callable[[], None] | None = None,
) -> Operation:
    """Record an operation of ``run`` with ``seq_id`` and hand it to dispatch.

    Idempotent: a resubmitted ``(run, seq_id)`` returns the existing future. If
    ``validate`` rejects the input, the operation is recorded as failed (category
    ``user``) instead of answering 4xx: its seq_id must still be consumed, or
    every later operation of the run would wait for it forever.
    """
    existing = Operation.objects.filter(training_run=run, seq_id=seq_id).first()
    if existing is not None:
        return existing
    if run.released:
        raise NotFound(f"training run {run.id!r} {release_reason(run)}")
    error = ""
    if validate is not None:
        try:
            validate()
        except (UserInputError, ApiError) as exc:
            error = str(exc)
    try:
        with transaction.atomic():
            op = Operation.objects.create(
                request_id=new_request_id(), tenant=tenant, kind=kind, training_run=run, seq_id=seq_id,
                # A refused body is not kept: it may be as large as the limit it broke.
                request=request, request_blob=None if error else blob,
                status=Operation.Status.FAILED if error else Operation.Status.PENDING,
                error=error, error_category="user" if error else "",
                finished_at=timezone.now() if error else None,
            )
            TrainingRun.objects.filter(pk=run.pk).update(last_request_at=timezone.now())
            _enqueue_on_commit(op, run)
    except IntegrityError:
        return Operation.objects.get(training_run=run, seq_id=seq_id)
    return op


def check_create_run_from_checkpoint(tenant: Tenant, session: ClientSession, body: Any) -> Operation:
    """create_training_client_from_state*: a new run whose seq 0 loads a checkpoint."""
    run_id = f"{session.id}:train:{body.model_seq_id}"
    existing = Operation.objects.filter(tenant=tenant, training_run_id=run_id, seq_id=0).first()
    if existing is not None:
        return existing
    ckpt = access_readable_checkpoint(tenant, body.path)
    if ckpt.kind != Checkpoint.Kind.TRAINING:
        raise ApiError("load_weights needs a training checkpoint (tinker://.../weights/...), not sampler weights")
    lora = lora_spec_from_checkpoint(absolute(ckpt.storage_path))
    return _do_create_run(tenant, session, body, ckpt.training_run.base_model, lora, Operation.Kind.LOAD_WEIGHTS)


def _do_create_run(tenant: Tenant, session: ClientSession, body: Any, base_model: str, lora: Any,
                   kind: str) -> Operation:
    """Record a run and the operation that creates it (its seq 0), within the tenant's quota, idempotently.

    ``lora`` is anything with rank/seed/train_* attributes (the SDK's LoraConfig
    or the engine's LoraSpec read from a checkpoint).
    """
    run_id = f"{session.id}:train:{body.model_seq_id}"
    with transaction.atomic():
        lock_tenant(tenant)  # count and insert as one step per tenant (see lock_tenant)
        # Again under the lock: a resubmission that raced its first try gets that
        # future, not a quota refusal (its own run would count against it).
        existing = Operation.objects.filter(tenant=tenant, training_run_id=run_id, seq_id=0).first()
        if existing is not None:
            return existing
        check_training_run_quota(tenant, lora.rank)
        run = TrainingRun.objects.create(
            id=run_id, tenant=tenant, session=session, model_seq_id=body.model_seq_id,
            base_model=base_model, lora_rank=lora.rank, lora_seed=lora.seed,
            train_mlp=lora.train_mlp, train_attn=lora.train_attn, train_unembed=lora.train_unembed,
            user_metadata=dict(body.user_metadata or {}),
        )
        op = Operation.objects.create(
            request_id=new_request_id(), tenant=tenant, kind=kind,
            training_run=run, seq_id=0, request=body.model_dump(mode="json"),
        )
        _enqueue_on_commit(op, run)
    return op


def do_release_runs_of_session(session: ClientSession) -> None:
    """Mark the session's runs released; their adapters are freed by the worker."""
    run_ids = list(session.training_runs.filter(released=False).values_list("id", flat=True))
    TrainingRun.objects.filter(id__in=run_ids).update(released=True)
    for run_id in run_ids:
        transaction.on_commit(lambda run_id=run_id: dispatch_registry.get_dispatcher().release_run(run_id))
        transaction.on_commit(lambda run_id=run_id: run_released.send(sender=TrainingRun, run_id=run_id))
    # The unnamed sampler saves of save_weights_and_get_sampling_client are ephemeral:
    # only this session could sample them, so they expire with it (an RL loop makes
    # one per iteration). Housekeeping deletes them, files included.
    Checkpoint.objects.filter(
        training_run__session=session, kind=Checkpoint.Kind.SAMPLER, name__startswith=EPHEMERAL_PREFIX,
        public=False, expires_at__isnull=True,
    ).update(expires_at=timezone.now())


def release_reason(run: TrainingRun) -> str:
    """Why a released run takes no more operations, in words for the SDK user.

    A run is released when its session ends, or earlier when an operator stops
    it (``do_stop_run``): then its session is still active.
    """
    if run.session.status == ClientSession.Status.ACTIVE:
        return "was released: stopped by an operator; create a new training client to continue"
    return "has been released (its session ended)"


def do_stop_run(run: TrainingRun, stopped_by: str) -> int:
    """Stop a live run now: release it and fail its queued operations; return how many were cancelled.

    The run no longer counts against the tenant's quota, its adapter is freed
    by the worker (the same release path as a finished session), and the SDK's
    next call on it is refused with a 404 that says it was stopped. An
    operation already running finishes normally. Checkpoints stay.
    """
    with transaction.atomic():
        if not TrainingRun.objects.filter(pk=run.pk, released=False).update(released=True):
            return 0  # already released
        queued = Operation.objects.filter(training_run_id=run.pk, status=Operation.Status.PENDING)
        request_ids = list(queued.values_list("request_id", flat=True))
        queued.update(status=Operation.Status.FAILED, error_category="user", finished_at=timezone.now(),
                      error=f"training run {run.id} was stopped by an operator before this operation ran")
        transaction.on_commit(lambda: dispatch_registry.get_dispatcher().release_run(run.id))
        transaction.on_commit(lambda: run_released.send(sender=TrainingRun, run_id=run.id))
    for request_id in request_ids:  # wake their long polls now rather than at the next database re-read
        completion_hub.notify(request_id)
    logger.info("run %s of tenant %s stopped by %s; %d queued operations cancelled",
                run.id, run.tenant_id, stopped_by, len(request_ids))
    return len(request_ids)


def do_cancel_queued_operations(request_ids: list[str], cancelled_by: str) -> int:
    """Fail those of ``request_ids`` that have not started yet; return how many.

    A cancelled training operation keeps its place in its run's order: the
    worker skips it as it skips an operation refused at submission, and later
    operations of the run still execute. One already running finishes.
    """
    with transaction.atomic():
        queued = Operation.objects.filter(request_id__in=request_ids, status=Operation.Status.PENDING)
        cancelled = list(queued.values_list("request_id", flat=True))
        queued.update(status=Operation.Status.FAILED, error_category="user", finished_at=timezone.now(),
                      error="cancelled by an operator before it ran")
    for request_id in cancelled:
        completion_hub.notify(request_id)
    logger.info("%s cancelled %d queued operations", cancelled_by, len(cancelled))
    return len(cancelled)


def do_record_checkpoint(
    run: TrainingRun, path: TinkerPath, storage_path: str, size_bytes: int,
    ttl_seconds: int | None, user_metadata: dict[str, Any] | None,
) -> Checkpoint:
    expires_at = timezone.now() + timezone.timedelta(seconds=ttl_seconds) if ttl_seconds else None
    ckpt, _ = Checkpoint.objects.update_or_create(
        tinker_path=str(path),
        defaults=dict(
            tenant_id=run.tenant_id, training_run=run, kind=path.kind, name=path.name,
            storage_path=storage_path, size_bytes=size_bytes, expires_at=expires_at,
            user_metadata=dict(user_metadata or {}), created_at=timezone.now(),
        ),
    )
    return ckpt
