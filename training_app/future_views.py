"""POST /api/v1/retrieve_future: the long poll every Tinker future goes through.

An async Django view, not a DRF one: under daphne every sync view shares one
thread, so a sync long poll would stall all other requests. It holds the
request open until the operation finishes or ``TUFT_LONG_POLL_S`` passes
(< 45 s, the SDK's timeout), then answers ``try_again``; the SDK re-polls at
once, so answering immediately would make it spin.
"""

from __future__ import annotations

import asyncio
import logging

import pydantic
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import ParseError
from tinker import types as T

from sessions_app.authentication import tenant_for_key
from training_app.futures import completion_hub
from training_app.models import Operation
from tuft_project.exceptions import error_body
from tuft_project.parsers import decode_json

logger = logging.getLogger(__name__)

# How often a waiting poll re-reads the database even without a notification
# (results written by another process, e.g. an RQ worker, only show up there).
RECHECK_S = 1.0


def render_operation(op: Operation) -> HttpResponse:
    if op.status == Operation.Status.FAILED:
        return JsonResponse({"error": op.error or "operation failed", "category": op.error_category or "server"})
    if op.result_blob is not None:
        return HttpResponse(bytes(op.result_blob), content_type="application/x-protobuf")
    return JsonResponse(op.result or {})


@csrf_exempt
async def retrieve_future(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return JsonResponse(error_body("method not allowed", "method_not_allowed"), status=405)
    found = await sync_to_async(tenant_for_key)(request.headers.get("X-API-Key"))
    if found is None:
        return JsonResponse(error_body("invalid or missing API key", "not_authenticated"), status=401)
    tenant, _ = found
    try:
        body = T.FutureRetrieveRequest.model_validate(decode_json(request.body))
    except RequestDataTooBig as exc:
        return JsonResponse(error_body(f"request body too large: {exc}", "payload_too_large"), status=413)
    except ParseError as exc:
        return JsonResponse(error_body(f"invalid retrieve_future body: {exc.detail}", "invalid_request"), status=400)
    except (ValueError, pydantic.ValidationError) as exc:
        return JsonResponse(error_body(f"invalid retrieve_future body: {exc}", "invalid_request"), status=400)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(settings.TUFT_LONG_POLL_S)
    with completion_hub.subscribe(body.request_id) as finished:
        while True:
            op = await Operation.objects.filter(tenant=tenant, request_id=body.request_id).afirst()
            if op is None:
                return JsonResponse(error_body(f"future {body.request_id!r} not found", "not_found"), status=404)
            if op.is_done:
                return render_operation(op)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return JsonResponse({"type": "try_again", "request_id": op.request_id, "queue_state": "active"})
            try:
                await asyncio.wait_for(finished.wait(), min(RECHECK_S, remaining))
            except asyncio.TimeoutError:
                pass
            finished.clear()
