"""OpenAI-compatible endpoints under /oai/api/v1/: models, completions, chat completions.

Async Django views, like ``retrieve_future``: a completion waits for its
sample operations, and under daphne every sync view shares one thread, so a
sync wait would stall the whole API. The database and tokenizer work runs in
``sync_to_async``; the domain steps are in ``openai_app.actions``.

Streaming (``stream: true``) sends OpenAI's server-sent events, one chunk per
generated token, once the sampler has finished the request: the sampling
back ends return whole sequences, so the first chunk arrives when the last
token has been decoded (the framing is exactly OpenAI's either way).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Callable, Iterator

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from openai_app import actions, responses
from openai_app.errors import OpenAIError, openai_errors
from openai_app.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from openai_app.tokenization import TextCodec, codecs
from sessions_app.authentication import tenant_for_key
from sessions_app.models import Tenant
from dispatch.completions import completion_hub
from training_app.models import Operation
from tuft_project.runtime import get_config

logger = logging.getLogger(__name__)

# A chat request without max_tokens generates at most this many tokens (or up
# to the context limit, if that is nearer). OpenAI's "up to the context" would
# keep a CPU server busy for minutes on a model that rarely emits EOS.
DEFAULT_CHAT_MAX_TOKENS = 256
# How often a waiting request re-reads the database without a notification
# (results written by another process, e.g. an RQ worker).
RECHECK_S = 1.0
# "created" of the base models: they exist since the server started.
_STARTED = int(time.time())


async def authenticate(request: HttpRequest) -> Tenant:
    """The tenant of ``Authorization: Bearer tml-…`` (what OpenAI clients send) or ``X-API-Key``."""
    raw = request.headers.get("X-API-Key")
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        raw = auth[7:].strip()
    found = await sync_to_async(tenant_for_key)(raw)
    if found is None:
        raise OpenAIError("invalid or missing API key (send Authorization: Bearer tml-…)", 401, "invalid_api_key")
    return found[0]


def _json_body(request: HttpRequest) -> Any:
    if request.method != "POST":
        raise OpenAIError("method not allowed; use POST", 405, "method_not_allowed")
    try:
        return json.loads(request.body or b"null")
    except ValueError:
        raise OpenAIError("request body must be JSON", 400, "invalid_json") from None


@csrf_exempt
@openai_errors
async def models(request: HttpRequest) -> HttpResponse:
    tenant = await authenticate(request)
    return JsonResponse({"object": "list", "data": await sync_to_async(_model_entries)(tenant)})


@csrf_exempt
@openai_errors
async def model_detail(request: HttpRequest, model_id: str) -> HttpResponse:
    tenant = await authenticate(request)
    entry = next((m for m in await sync_to_async(_model_entries)(tenant) if m["id"] == model_id), None)
    if entry is None:
        raise OpenAIError(f"model {model_id!r} not found", 404, "model_not_found")
    return JsonResponse(entry)


def _model_entries(tenant: Tenant) -> list[dict[str, Any]]:
    entries = [{"id": m.model_name, "object": "model", "created": _STARTED, "owned_by": "tuft",
                "max_model_len": m.max_model_len} for m in get_config().models]
    for ckpt in actions.readable_sampler_checkpoints(tenant):
        entries.append({
            "id": ckpt.tinker_path, "object": "model", "created": int(ckpt.created_at.timestamp()),
            "owned_by": "you" if ckpt.tenant_id == tenant.pk else "published",
            "root": ckpt.training_run.base_model, "parent": ckpt.training_run.base_model,
        })
    return entries


@csrf_exempt
@openai_errors
async def completions(request: HttpRequest) -> HttpResponse:
    tenant = await authenticate(request)
    body = CompletionRequest.model_validate(_json_body(request))
    if body.echo:
        raise OpenAIError("echo is not supported", 400, "unsupported_parameter")
    with_logprobs = body.logprobs is not None
    codec, answer = await _sample(tenant, body, _encode_prompts, body.logprobs or 0)
    if body.stream:
        return _stream(responses.completion_chunks(answer, codec, with_logprobs, body.include_usage))
    return JsonResponse(responses.completion_body(answer, codec, with_logprobs))


@csrf_exempt
@openai_errors
async def chat_completions(request: HttpRequest) -> HttpResponse:
    tenant = await authenticate(request)
    body = ChatCompletionRequest.model_validate(_json_body(request))
    if body.tools:
        raise OpenAIError("tools are not supported", 400, "unsupported_parameter")
    topk = (body.top_logprobs or 0) if body.logprobs else 0
    codec, answer = await _sample(tenant, body, _render_chat, topk)
    if body.stream:
        return _stream(responses.chat_chunks(answer, codec, body.logprobs, body.include_usage))
    return JsonResponse(responses.chat_body(answer, codec, body.logprobs))


def _encode_prompts(codec: TextCodec, body: Any) -> list[list[int]]:
    prompts = [codec.encode(p) if isinstance(p, str) else list(p) for p in body.prompts()]
    if not prompts or any(not p for p in prompts):
        raise OpenAIError("prompt must not be empty", 400, "invalid_prompt")
    return prompts


def _render_chat(codec: TextCodec, body: Any) -> list[list[int]]:
    try:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    except ValueError as exc:
        raise OpenAIError(str(exc), 400, "unsupported_content") from None
    return [codec.render_chat(messages)]


PromptBuilder = Callable[[TextCodec, Any], list[list[int]]]


async def _sample(tenant: Tenant, body: SamplingFields, to_prompts: PromptBuilder,
                  topk: int) -> tuple[TextCodec, responses.Answer]:
    """Submit the request through the sampling path, wait for it and decode the answer."""

    def submit() -> tuple[TextCodec, list[list[int]], actions.Submission]:
        choice = actions.access_model(tenant, body.model)
        codec = codecs.for_model(get_config(), choice.base_model)
        prompts = to_prompts(codec, body)
        params = actions.SampleParams(
            max_tokens=_max_tokens(body, choice.base_model, max(len(p) for p in prompts)),
            temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=body.stop_strings(),
            num_samples=body.n, topk_logprobs=topk,
        )
        return codec, prompts, actions.check_submit_completion(tenant, choice, prompts, params)

    codec, prompts, submission = await sync_to_async(submit)()
    try:
        blobs = await _wait_for_results(tenant, submission.operations)
    finally:
        await sync_to_async(actions.do_close_request_session)(submission.session)
    choices = await sync_to_async(responses.decode_choices)(codec, blobs, body.stop_strings())
    prefix = "chatcmpl" if isinstance(body, ChatCompletionRequest) else "cmpl"
    answer = responses.Answer(id=responses.new_id(prefix), created=responses.now(), model=body.model,
                              choices=choices, prompt_tokens=sum(len(p) for p in prompts))
    return codec, answer


def _max_tokens(body: SamplingFields, base_model: str, prompt_len: int) -> int:
    room = max(1, actions.max_model_len(base_model) - prompt_len)
    if isinstance(body, ChatCompletionRequest):
        return body.token_limit() or min(DEFAULT_CHAT_MAX_TOKENS, room)
    return body.max_tokens or 16


async def _wait_for_results(tenant: Tenant, ops: list[Operation]) -> list[bytes]:
    """Wait (bounded by TUFT_OAI_TIMEOUT_S) until every operation is done; their result blobs, in order."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(settings.TUFT_OAI_TIMEOUT_S)
    blobs = []
    for op in ops:
        with completion_hub.subscribe(op.request_id) as finished:
            while True:
                current = await Operation.objects.filter(tenant=tenant, request_id=op.request_id).afirst()
                if current is None:
                    raise OpenAIError("the request vanished", 500, "server_error")
                if current.status == Operation.Status.FAILED:
                    status = 400 if current.error_category == "user" else 500
                    raise OpenAIError(current.error or "sampling failed", status, "sampling_failed")
                if current.is_done:
                    blobs.append(bytes(current.result_blob or b""))
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise OpenAIError(
                        f"sampling did not finish within {settings.TUFT_OAI_TIMEOUT_S:.0f} s", 504, "timeout"
                    )
                try:
                    await asyncio.wait_for(finished.wait(), min(RECHECK_S, remaining))
                except asyncio.TimeoutError:
                    pass
                finished.clear()
    return blobs


def _stream(chunks: Iterator[dict]) -> StreamingHttpResponse:
    async def events() -> AsyncIterator[bytes]:
        for event in responses.sse(chunks):
            yield event

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # let a reverse proxy pass each event on at once
    return response
