"""The sampling playground: a tenant types a prompt on its dashboard and sees tokens and logprobs.

Everything goes through the same domain path as the SDK's ``sample``: a client
session of the tenant (one per tenant, named "dashboard playground", kept
alive by each use), one sampling session per model choice in it (so repeated
tries do not use up the sampling-session quota), and a sample operation that
the worker runs like any other, under the tenant's quota and back-pressure.
The web process never loads the model: the prompt is tokenized with the
model's ``tokenizer.json`` through the ``tokenizers`` library (no torch).
"""

from __future__ import annotations

import functools
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone
from tinker import types as T
from tinker.proto.response_conv import deserialize_sample_response
from tokenizers import Tokenizer

from sampling_app.actions import check_create_sampling_session, check_submit_sample
from sampling_app.models import SamplingSession
from sampling_app.specs import check_fits_model, sample_spec_from_request
from sessions_app.actions import do_heartbeat
from sessions_app.models import ClientSession, Tenant
from sessions_app.quotas import lock_tenant
from training_app.actions import access_operation
from training_app.models import Checkpoint, Operation
from tuft_project.exceptions import BadRequest
from tuft_project.runtime import get_config

logger = logging.getLogger(__name__)

PLAYGROUND_TAG = "dashboard-playground"
MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class ModelChoice:
    """What the playground samples from: a base model, or one of the tenant's sampler checkpoints."""

    value: str  # "base:<model name>" or "ckpt:<tinker path>"
    label: str
    base_model: str
    model_path: str | None


def choices(tenant: Tenant) -> list[ModelChoice]:
    out = [ModelChoice(f"base:{m.model_name}", f"{m.model_name} (base model)", m.model_name, None)
           for m in get_config().models]
    ckpts = (Checkpoint.objects.filter(tenant=tenant, kind=Checkpoint.Kind.SAMPLER)
             .exclude(expires_at__lte=timezone.now()).select_related("training_run").order_by("-created_at")[:50])
    out += [ModelChoice(f"ckpt:{c.tinker_path}", f"{c.name} · {c.training_run.display_name}",
                        c.training_run.base_model, c.tinker_path) for c in ckpts]
    return out


@functools.cache  # one parsed tokenizer per model directory; models.yaml does not change while serving
def _tokenizer(model_path: str) -> Tokenizer:
    return Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))


def tokenizer_for(base_model: str) -> Tokenizer:
    spec = next((m for m in get_config().models if m.model_name == base_model), None)
    if spec is None or not (Path(spec.model_path) / "tokenizer.json").exists():
        raise BadRequest(f"the playground cannot tokenize text for {base_model} (no tokenizer.json)")
    return _tokenizer(spec.model_path)


def _playground_session(tenant: Tenant) -> ClientSession:
    session = ClientSession.objects.filter(tenant=tenant, status=ClientSession.Status.ACTIVE,
                                           tags=[PLAYGROUND_TAG]).order_by("-created_at").first()
    if session is None:
        session = ClientSession.objects.create(
            id="sess-" + secrets.token_hex(8), tenant=tenant,
            tags=[PLAYGROUND_TAG], display_name="dashboard playground", sdk_version="dashboard")
    else:
        do_heartbeat(session)
    return session


def _sampler(tenant: Tenant, session: ClientSession, choice: ModelChoice) -> SamplingSession:
    found = SamplingSession.objects.filter(session=session, base_model=choice.base_model,
                                           model_path=choice.model_path or "").first()
    if found is not None:
        return found
    seq = SamplingSession.objects.filter(session=session).count()
    base_names = {m.model_name for m in get_config().models}
    return check_create_sampling_session(tenant, session, seq, None if choice.model_path else choice.base_model,
                                         choice.model_path, base_names)


def check_playground_sample(tenant: Tenant, choice_value: str, prompt: str, max_tokens: int,
                            temperature: float) -> Operation:
    """Validate, record and queue one sample request; raises ApiError (4xx) on bad input or quota."""
    choice = next((c for c in choices(tenant) if c.value == choice_value), None)
    if choice is None:
        raise BadRequest("pick a base model or one of your sampler checkpoints")
    if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"type a prompt of 1 to {MAX_PROMPT_CHARS} characters")
    if not 1 <= max_tokens <= MAX_NEW_TOKENS or not 0.0 <= temperature <= 2.0:
        raise BadRequest(f"max tokens must be 1..{MAX_NEW_TOKENS} and temperature 0..2")
    ids = tokenizer_for(choice.base_model).encode(prompt).ids
    if not ids:
        raise BadRequest("the prompt has no tokens")
    with transaction.atomic():
        # The sampler and seq numbers below are counts: one playground request per tenant
        # at a time, or two concurrent ones take the same number (see lock_tenant).
        lock_tenant(tenant)
        session = _playground_session(tenant)
        sampler = _sampler(tenant, session, choice)
        seq_id = Operation.objects.filter(sampling_session=sampler).count()
        body = T.SampleRequest(sampling_session_id=sampler.id, seq_id=seq_id, num_samples=1,
                               prompt=T.ModelInput.from_ints(ids),
                               sampling_params=T.SamplingParams(max_tokens=max_tokens, temperature=temperature))
        spec = sample_spec_from_request(body)
        check_fits_model(spec, sampler.base_model)
        op = check_submit_sample(tenant, sampler, seq_id, body.model_dump(mode="json"), len(ids), max_tokens)
    logger.info("playground sample %s of tenant %s on %s", op.request_id, tenant.name, choice.value)
    return op


def playground_result(tenant: Tenant, request_id: str) -> dict[str, Any]:
    """The outcome of a playground request: pending, failed (with why), or the tokens with their logprobs."""
    op = access_operation(tenant, request_id)  # another tenant's request is a 404
    if op.kind != Operation.Kind.SAMPLE:
        raise BadRequest("not a sample request")
    if not op.is_done:
        return {"status": op.status}
    if op.status == Operation.Status.FAILED:
        return {"status": "failed", "error": op.error}
    tokenizer = tokenizer_for(op.sampling_session.base_model) if op.sampling_session else None
    prompt_ids = list(((op.request or {}).get("prompt") or {}).get("chunks", [{}])[0].get("tokens", []))
    response = deserialize_sample_response(bytes(op.result_blob or b""))
    sequences = []
    for seq in response.sequences:
        tokens = list(seq.tokens)
        pieces = [tokenizer.decode([t]) if tokenizer else str(t) for t in tokens]
        sequences.append({"tokens": tokens, "pieces": pieces, "logprobs": list(seq.logprobs or []),
                          "text": tokenizer.decode(tokens) if tokenizer else "", "stop_reason": str(seq.stop_reason)})
    return {"status": "completed", "prompt_tokens": prompt_ids,
            "prompt_pieces": [tokenizer.decode([t]) if tokenizer else str(t) for t in prompt_ids],
            "sequences": sequences}
