"""The OpenAI endpoints' domain steps, built on the Tinker sampling path.

A completion request becomes exactly what an SDK client would create: a client
session, a sampling session on the requested model (base model or readable
``tinker://`` sampler checkpoint) and one sample operation per prompt, through
``sampling_app.actions``. Isolation, quotas, back-pressure and usage
accounting are therefore the Tinker API's own. The session lives for one
request and is closed when the answer is complete, so it does not count
against the sampling-session quota afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db.models import Q
from django.utils import timezone
from tinker import types as T

from sampling_app.actions import check_create_sampling_session, check_submit_sample
from sampling_app.specs import check_fits_model, sample_spec_from_request
from sessions_app.actions import do_create_session, do_finish_session
from sessions_app.models import ClientSession, Tenant
from training_app.actions import access_readable_checkpoint
from training_app.models import Checkpoint, Operation
from tuft_project.exceptions import NotFound
from tuft_project.runtime import get_config

logger = logging.getLogger(__name__)

TINKER_PREFIX = "tinker://"


@dataclass(frozen=True)
class ModelChoice:
    """What a request's ``model`` names: a base model, optionally with a sampler checkpoint."""

    base_model: str
    model_path: str | None  # tinker:// path, None for the base model alone


@dataclass(frozen=True)
class SampleParams:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    num_samples: int
    topk_logprobs: int


@dataclass(frozen=True)
class Submission:
    session: ClientSession
    operations: list[Operation]  # one per prompt, in prompt order


def access_model(tenant: Tenant, model: str) -> ModelChoice:
    """The base model (by name or path) or a checkpoint the tenant may read; else 404."""
    if model.startswith(TINKER_PREFIX):
        ckpt = access_readable_checkpoint(tenant, model)
        return ModelChoice(base_model=ckpt.training_run.base_model, model_path=ckpt.tinker_path)
    spec = get_config().find_model(model)
    if spec is None:
        raise NotFound(f"model {model!r} not found; GET /oai/api/v1/models lists the models you can use")
    return ModelChoice(base_model=spec.model_name, model_path=None)


def max_model_len(base_model: str) -> int:
    spec = get_config().find_model(base_model)
    assert spec is not None
    return spec.max_model_len


def check_submit_completion(tenant: Tenant, choice: ModelChoice, prompts: list[list[int]],
                            params: SampleParams) -> Submission:
    """Open a one-request session and queue one sample operation per prompt.

    Every prompt is validated (and fitted to the model's context) before any
    row is written, so a bad request leaves nothing behind.
    """
    bodies = [_sample_request(prompt, params) for prompt in prompts]
    for body in bodies:
        check_fits_model(sample_spec_from_request(body), choice.base_model)
    session = do_create_session(
        tenant, T.CreateSessionRequest(tags=["openai"], user_metadata={}, sdk_version="openai-compatible",
                                       display_name="OpenAI-compatible request"), None,
    )
    try:
        sampler = check_create_sampling_session(
            tenant, session, 0, choice.base_model if choice.model_path is None else None, choice.model_path,
            {m.model_name for m in get_config().models},
        )
        ops = []
        for seq_id, body in enumerate(bodies):
            body = body.model_copy(update={"sampling_session_id": sampler.id, "seq_id": seq_id})
            ops.append(check_submit_sample(
                tenant, sampler, seq_id, body.model_dump(mode="json"),
                len(prompts[seq_id]), params.max_tokens * params.num_samples,
            ))
    except Exception:
        do_close_request_session(session)
        raise
    logger.info("tenant %s: OpenAI request on %s as %s", tenant.pk, choice.model_path or choice.base_model,
                ", ".join(op.request_id for op in ops))
    return Submission(session=session, operations=ops)


def _sample_request(prompt: list[int], params: SampleParams) -> T.SampleRequest:
    return T.SampleRequest(
        sampling_session_id="pending", seq_id=0, num_samples=params.num_samples,
        prompt=T.ModelInput.from_ints(prompt),
        sampling_params=T.SamplingParams(
            max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            seed=params.seed, stop=params.stop or None,
        ),
        topk_sample_logprobs=params.topk_logprobs,
    )


def do_close_request_session(session: ClientSession) -> None:
    do_finish_session(session, ClientSession.Status.FINISHED, "OpenAI-compatible request answered")


def readable_sampler_checkpoints(tenant: Tenant) -> list[Checkpoint]:
    """Sampler checkpoints the tenant owns or that are published, unexpired, newest first."""
    return list(
        Checkpoint.objects.filter(kind=Checkpoint.Kind.SAMPLER)
        .filter(Q(tenant=tenant) | Q(public=True))
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        .select_related("training_run")
        .order_by("-created_at")[:1000]
    )
