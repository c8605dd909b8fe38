"""Errors map to HTTP in one place.

Domain code raises ``ApiError`` subclasses (or the engine's ``UserInputError``);
``api_exception_handler`` (DRF's EXCEPTION_HANDLER) turns every error into a
JSON body with a status the Tinker SDK treats correctly: never an empty body,
and never 409/402 for ordinary failures (the SDK retries those for minutes).
"""

from __future__ import annotations

import logging
from typing import Any

import pydantic
from django.core.exceptions import DisallowedHost
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import DataError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from engine.types import UserInputError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class BadRequest(ApiError):
    status_code = 400
    code = "bad_request"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Gone(ApiError):
    """The session is finished: the SDK stops its heartbeat loop on 410."""

    status_code = 410
    code = "gone"


class QuotaExceeded(ApiError):
    """A tenant limit that waiting will not lift: 403, so the SDK does not retry."""

    status_code = 403
    code = "quota_exceeded"


class RateLimited(ApiError):
    """Back-pressure the client should wait out (sent with Retry-After)."""

    status_code = 429
    code = "rate_limited"


def error_body(detail: Any, code: str) -> dict[str, Any]:
    return {"detail": detail, "code": code}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApiError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return Response(error_body(exc.detail, exc.code), status=exc.status_code, headers=headers)
    if isinstance(exc, UserInputError):
        return Response(error_body(str(exc), "invalid_input"), status=400)
    if isinstance(exc, pydantic.ValidationError):
        errors = [
            {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False)
        ]
        return Response({"detail": "invalid request body", "code": "invalid_request", "errors": errors}, status=400)
    if isinstance(exc, Http404):
        return Response(error_body("not found", "not_found"), status=404)
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body(f"request body too large: {exc}", "payload_too_large"), status=413)
    if isinstance(exc, SuspiciousOperation):
        # Django's request guards, e.g. more than DATA_UPLOAD_MAX_NUMBER_FIELDS query parameters.
        return Response(error_body(f"bad request: {exc}", "bad_request"), status=400)
    if isinstance(exc, DataError):
        # The database refused a value (too long for its column, out of its integer
        # range, NUL in text on PostgreSQL). The views check the values they know
        # of (tuft_project.input_checks); this keeps any other one a client error.
        logger.warning("database refused a value in %s: %s", context.get("view"), exc)
        first_line = (str(exc).splitlines() or ["invalid value"])[0]
        return Response(error_body(f"a value in the request cannot be stored: {first_line}", "invalid_input"),
                        status=400)
    response = exception_handler(exc, context)
    if response is not None:
        if isinstance(exc, drf_exceptions.APIException):
            response.data = error_body(response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data, exc.default_code)
        return response
    logger.exception("unhandled error in %s", context.get("view"))
    return Response(error_body("internal server error", "server_error"), status=500)


def json_400(request: Any, exception: Exception | None = None) -> JsonResponse:
    """Django's own 400s, raised before any view runs (e.g. a Host not in ALLOWED_HOSTS)."""
    if isinstance(exception, DisallowedHost):
        return JsonResponse(error_body("this server does not answer to that Host header "
                                       "(see TUFT_ALLOWED_HOSTS)", "disallowed_host"), status=400)
    return JsonResponse(error_body("bad request", "bad_request"), status=400)


def json_404(request: Any, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not found", "not_found"), status=404)


def json_500(request: Any) -> JsonResponse:
    return JsonResponse(error_body("internal server error", "server_error"), status=500)
