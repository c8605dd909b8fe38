"""Training operation handlers: turn an operation into engine calls and its outcome.

Registered with ``workers.executor`` by kind (``@handles``, ``handles_batch``)
when the app is ready (``TrainingAppConfig.ready``); the executor runs them.
Sampling's handler is ``sampling_app.handlers``, save_weights_external's
``training_app.export_jobs``.
"""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING

from tinker import types as T

from engine.types import AdamSpec, ForwardBackwardResult, ForwardBackwardSpec, LoraSpec, UserInputError
from sampling_app.actions import check_create_sampling_session_for_checkpoint
from sampling_app.models import SamplingSession
from sessions_app.quotas import check_checkpoint_fits, check_checkpoint_storage, check_sampling_session_quota
from training_app import protocol
from training_app.actions import EPHEMERAL_PREFIX, access_readable_checkpoint, do_record_checkpoint
from training_app.checkpoint_deletion import do_delete_checkpoints
from training_app.checkpoint_paths import TinkerPath, absolute, check_name, storage_relpath
from training_app.models import Checkpoint, Operation, TrainingRun
from tuft_project.exceptions import ApiError, QuotaExceeded
from workers.executor import BatchHandler, Outcome, handles, handles_batch

if TYPE_CHECKING:  # importing the engine loads torch: keep it out of views and manage.py
    from engine.runtime import Engine

logger = logging.getLogger(__name__)


def _lora(run: TrainingRun) -> LoraSpec:
    return LoraSpec(
        rank=run.lora_rank, seed=run.lora_seed, train_mlp=run.train_mlp,
        train_attn=run.train_attn, train_unembed=run.train_unembed,
    )


@handles(Operation.Kind.CREATE_MODEL)
def _create_model(engine: Engine, op: Operation) -> Outcome:
    run = op.training_run
    assert run is not None
    engine.create_run(run.id, run.base_model, _lora(run))
    TrainingRun.objects.filter(pk=run.pk).update(ready=True)
    return Outcome(result={"model_id": run.id, "type": "create_model"})


def _forward_backward_spec(engine: Engine, op: Operation) -> tuple[ForwardBackwardSpec, int]:
    """The engine request of a forward(_backward) operation, and its token count."""
    run = op.training_run
    assert run is not None and op.request_blob is not None
    call = protocol.decode_forward_backward(bytes(op.request_blob))
    spec = ForwardBackwardSpec(
        run_id=run.id, data=call.data, loss_fn=call.loss_fn,
        loss_fn_config=call.loss_fn_config, forward_only=call.forward_only,
    )
    return spec, sum(len(d.tokens) for d in call.data)


def _forward_backward_outcome(op: Operation, tokens: int, result: ForwardBackwardResult) -> Outcome:
    return Outcome(blob=protocol.encode_forward_backward_output(result), num_tokens=tokens, metrics=result.metrics)


# Ready forward/forward_backward operations of different runs share one engine pass.
FORWARD_BACKWARD = BatchHandler(
    prepare=_forward_backward_spec,
    run=lambda engine, specs: engine.forward_backward_many(specs),
    finish=_forward_backward_outcome,
)
handles_batch(Operation.Kind.FORWARD_BACKWARD, FORWARD_BACKWARD)
handles_batch(Operation.Kind.FORWARD, FORWARD_BACKWARD)


def _optim_step_spec(engine: Engine, op: Operation) -> tuple[tuple[str, AdamSpec], None]:
    """The engine request of an optim_step operation: ``(run id, AdamW hyperparameters)``."""
    body = T.OptimStepRequest.model_validate(op.request)
    params = body.optim_params
    if not isinstance(params, T.AdamParams):
        raise UserInputError("only AdamW (adam_params) is supported")
    adam = AdamSpec(
        learning_rate=params.learning_rate, beta1=params.beta1, beta2=params.beta2,
        eps=params.eps, weight_decay=params.weight_decay, grad_clip_norm=params.grad_clip_norm,
    )
    assert op.training_run is not None
    return (op.training_run.id, adam), None


def _optim_step_outcome(op: Operation, context: None, metrics: dict[str, float]) -> Outcome:
    return Outcome(result={"metrics": metrics, "type": "optim_step"}, metrics=metrics)


# Ready optim_steps of different runs share one fused AdamW update (Engine.optim_step_many):
# after a batched forward_backward, every run's optim_step is ready at once.
handles_batch(Operation.Kind.OPTIM_STEP, BatchHandler(
    prepare=_optim_step_spec,
    run=lambda engine, steps: engine.optim_step_many(steps),
    finish=_optim_step_outcome,
))


def _save(engine: Engine, op: Operation, kind: str, name: str, with_optimizer: bool, overwrite: bool) -> Checkpoint:
    run = op.training_run
    assert run is not None
    path = TinkerPath(run.id, kind, check_name(name))
    check_checkpoint_storage(op.tenant)
    rel = storage_relpath(op.tenant_id, path)
    size = engine.save(run.id, absolute(rel), with_optimizer=with_optimizer, overwrite=overwrite)
    try:
        check_checkpoint_fits(op.tenant, str(path), size)
    except ApiError:
        # The size is known only once written: remove what would break the quota.
        # An overwritten checkpoint's old files are gone too, so its row goes with them.
        shutil.rmtree(absolute(rel), ignore_errors=True)
        Checkpoint.objects.filter(tinker_path=str(path)).delete()
        raise
    return do_record_checkpoint(
        run, path, rel, size, op.request.get("ttl_seconds"), op.request.get("user_metadata"),
    )


@handles(Operation.Kind.SAVE_WEIGHTS)
def _save_weights(engine: Engine, op: Operation) -> Outcome:
    body = T.SaveWeightsRequest.model_validate(op.request)
    ckpt = _save(engine, op, Checkpoint.Kind.TRAINING, body.path or "", True, bool(body.overwrite))
    return Outcome(result={"path": ckpt.tinker_path, "type": "save_weights"})


@handles(Operation.Kind.SAVE_WEIGHTS_FOR_SAMPLER)
def _save_weights_for_sampler(engine: Engine, op: Operation) -> Outcome:
    body = T.SaveWeightsForSamplerRequest.model_validate(op.request)
    if body.path:
        ckpt = _save(engine, op, Checkpoint.Kind.SAMPLER, body.path, False, True)
        return Outcome(result={"path": ckpt.tinker_path, "type": "save_weights_for_sampler"})
    # Unnamed save (save_weights_and_get_sampling_client): a fresh sampler
    # checkpoint plus the sampling session the SDK will sample from directly.
    if body.sampling_session_seq_id is None:
        raise UserInputError("save_weights_for_sampler needs a path or a sampling_session_seq_id")
    run = op.training_run
    assert run is not None
    if not SamplingSession.objects.filter(id=f"{run.session_id}:sample:{body.sampling_session_seq_id}").exists():
        # This save also opens a sampling session: refuse before writing a checkpoint
        # for nothing. Decided for good under the tenant's lock, when it is inserted.
        check_sampling_session_quota(op.tenant)
    ckpt = _save(engine, op, Checkpoint.Kind.SAMPLER, f"{EPHEMERAL_PREFIX}{op.request_id}", False, True)
    try:
        sampler = check_create_sampling_session_for_checkpoint(run.session, body.sampling_session_seq_id, ckpt)
    except QuotaExceeded:
        # Another sampling session took the last place while this save ran: the
        # checkpoint was only for the refused one (no one else knows its path).
        do_delete_checkpoints([ckpt])
        raise
    return Outcome(result={"sampling_session_id": sampler.id, "path": ckpt.tinker_path,
                           "type": "save_weights_for_sampler"})


@handles(Operation.Kind.LOAD_WEIGHTS)
def _load_weights(engine: Engine, op: Operation) -> Outcome:
    body = T.LoadWeightsRequest.model_validate(op.request)
    run = op.training_run
    assert run is not None
    ckpt = access_readable_checkpoint(op.tenant, body.path)
    if ckpt.kind != Checkpoint.Kind.TRAINING:
        raise UserInputError("load_weights needs a training checkpoint (tinker://.../weights/...)")
    if ckpt.training_run.base_model != run.base_model:
        raise UserInputError(
            f"checkpoint is for base model {ckpt.training_run.base_model}, this run uses {run.base_model}"
        )
    engine.load(run.id, run.base_model, absolute(ckpt.storage_path), with_optimizer=bool(body.optimizer))
    TrainingRun.objects.filter(pk=run.pk).update(ready=True)
    return Outcome(result={"path": body.path, "model_id": run.id, "type": "load_weights"})
