"""POST /api/v1/retrieve_future: the long poll every Tinker future goes through.

An async Django view, not a DRF one: under daphne every sync view shares one
thread, so a sync long poll would stall all other requests. It holds the
request open until the operation finishes or ``TUFT_LONG_POLL_S`` passes
(< 45 s, the SDK's timeout), then answers ``try_again``; the SDK re-polls at
once, so answering immediately would make it spin.

It runs on the event loop with no sync middleware around it
(``tuft_project.asgi_handler.hot_async_view``). A result this process's lanes
finished in the last seconds is answered without leaving the event loop: the
key is checked with one read of the SQLite file
(``sessions_app.authentication.tenant_id_for_key_now``) and the answer's bytes
were kept when the result was recorded (``training_app.ready_results``). Any
other ready result costs one trip to a reader thread (authentication and the
read together) and no other thread hand-over. While waiting it does nothing
until a completion event arrives (``dispatch.completions``, subscribed before
the first read): it reads the database once per request and once per wake-up
(none when the answer was kept in memory), never on a timer (at 100 clients
the old once-a-second re-read per waiter kept the event loop busy). The reads run on a small pool of
long-lived threads rather than a fresh thread per request.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import pydantic
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import ParseError
from tinker import types as T

from dispatch.completions import completion_hub, completion_sweeper
from monitoring_app.metrics import LONG_POLLS
from sessions_app.authentication import NoQuickAnswer, tenant_for_key, tenant_id_for_key_now
from sessions_app.models import Tenant
from training_app.models import Operation
from training_app.ready_results import ready_results, render_operation
from tuft_project.asgi_handler import hot_async_view
from tuft_project.exceptions import error_body
from tuft_project.parsers import decode_json

logger = logging.getLogger(__name__)

_R = TypeVar("_R")

# Threads for this view's database reads. A few are enough: each read is one
# indexed lookup, and waiting polls hold no thread. (Django's own sync_to_async
# would start a new thread for every request: one per ThreadSensitiveContext.)
_READERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tuft-poll")


async def _read(fn: Callable[..., _R], *args: object) -> _R:
    """Run ``fn(*args)`` on a reader thread; its connection obeys CONN_MAX_AGE like a request's."""

    def call() -> _R:
        try:
            return fn(*args)
        finally:
            close_old_connections()

    ctx = contextvars.copy_context()  # the tenant bound by authentication stays with this call
    return await asyncio.get_running_loop().run_in_executor(_READERS, ctx.run, call)


def _find_operation(tenant: Tenant, request_id: str) -> Operation | None:
    return Operation.objects.filter(tenant=tenant, request_id=request_id).first()


def _authenticate_and_find(raw_key: str | None, request_id: str | None) -> tuple[Tenant | None, Operation | None]:
    """The caller's tenant (None: bad key) and, if ``request_id`` is given, its operation: one thread hop."""
    found = tenant_for_key(raw_key)
    if found is None:
        return None, None
    tenant = found[0]
    return tenant, _find_operation(tenant, request_id) if request_id is not None else None


@hot_async_view  # runs on the event loop without the sync middleware chain (tuft_project.asgi_handler)
@csrf_exempt
async def retrieve_future(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return JsonResponse(error_body("method not allowed", "method_not_allowed"), status=405)
    body, refusal = _parse_body(request)
    raw_key = request.headers.get("X-API-Key")
    # A result this process finished moments ago is answered on the event loop:
    # the key checked by one read of the SQLite file (as exact as the reader
    # thread's check), the answer bytes from memory (training_app.ready_results).
    try:
        tenant_id = tenant_id_for_key_now(raw_key)
    except NoQuickAnswer:
        pass
    else:
        if tenant_id is None:
            return JsonResponse(error_body("invalid or missing API key", "not_authenticated"), status=401)
        if body is None:
            return refusal
        ready = ready_results.get(body.request_id, tenant_id)
        if ready is not None:
            return ready.response()
    if body is None:  # the key decides between 401 and the body's 4xx
        tenant, _ = await _read(_authenticate_and_find, raw_key, None)
        if tenant is None:
            return JsonResponse(error_body("invalid or missing API key", "not_authenticated"), status=401)
        return refusal
    # Subscribed before the first read, so that a completion landing after that
    # read wakes this poll: one read before waiting is enough.
    with completion_hub.subscribe(body.request_id) as finished:
        # Authentication and the first read of the operation in one trip to a reader
        # thread: a ready result is answered without waiting for a thread twice.
        tenant, op = await _read(_authenticate_and_find, raw_key, body.request_id)
        if tenant is None:
            return JsonResponse(error_body("invalid or missing API key", "not_authenticated"), status=401)
        if op is None:
            return JsonResponse(error_body(f"future {body.request_id!r} not found", "not_found"), status=404)
        if op.is_done:
            return render_operation(op)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(settings.TUFT_LONG_POLL_S)
        completion_sweeper.ensure_running(float(settings.TUFT_LONG_POLL_SWEEP_S))
        with LONG_POLLS.track_inprogress():
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return JsonResponse({"type": "try_again", "request_id": body.request_id, "queue_state": "active"})
                try:
                    await asyncio.wait_for(finished.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
                finished.clear()
                # Woken by this process's lane: the answer is in memory already.
                ready = ready_results.get(body.request_id, tenant.id)
                if ready is not None:
                    return ready.response()
                op = await _read(_find_operation, tenant, body.request_id)
                if op is None:
                    return JsonResponse(error_body(f"future {body.request_id!r} not found", "not_found"), status=404)
                if op.is_done:
                    return render_operation(op)


def _parse_body(request: HttpRequest) -> tuple[T.FutureRetrieveRequest | None, HttpResponse]:
    """The validated body, or None and the 4xx answer (given only once the key is known good)."""
    try:
        return T.FutureRetrieveRequest.model_validate(decode_json(request.body)), HttpResponse()
    except RequestDataTooBig as exc:
        return None, JsonResponse(error_body(f"request body too large: {exc}", "payload_too_large"), status=413)
    except ParseError as exc:
        return None, JsonResponse(error_body(f"invalid retrieve_future body: {exc.detail}", "invalid_request"),
                                  status=400)
    except (ValueError, pydantic.ValidationError) as exc:
        return None, JsonResponse(error_body(f"invalid retrieve_future body: {exc}", "invalid_request"), status=400)
