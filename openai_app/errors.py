"""Errors of the OpenAI endpoints, in OpenAI's JSON shape.

The status codes are the Tinker API's (``tuft_project.exceptions``): the same
domain errors (404 for another tenant's checkpoint, 403 over a quota, 429
back-pressure with Retry-After) reach OpenAI clients with the body they parse:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable

import pydantic
from django.http import HttpRequest, HttpResponse, JsonResponse

from engine.types import UserInputError
from tuft_project.exceptions import ApiError

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    405: "invalid_request_error", 410: "invalid_request_error", 429: "rate_limit_error", 504: "timeout_error",
}


class OpenAIError(ApiError):
    """An error raised by the OpenAI layer itself, with any status."""

    def __init__(self, detail: str, status: int, code: str) -> None:
        super().__init__(detail)
        self.status_code = status
        self.code = code


def error_response(message: str, status: int, code: str | None, retry_after: int | None = None) -> JsonResponse:
    body = {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": None, "code": code}}
    response = JsonResponse(body, status=status)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


View = Callable[..., Awaitable[HttpResponse]]


def openai_errors(view: View) -> View:
    """Answer every failure of ``view`` as an OpenAI error body (never an HTML 500)."""

    @functools.wraps(view)
    async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return await view(request, *args, **kwargs)
        except ApiError as exc:
            return error_response(exc.detail, exc.status_code, exc.code, exc.retry_after)
        except UserInputError as exc:
            return error_response(str(exc), 400, "invalid_input")
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            return error_response(f"invalid request body: {problems}", 400, "invalid_request")
        except Exception:
            logger.exception("unhandled error in OpenAI endpoint %s", request.path)
            return error_response("internal server error", 500, "server_error")

    return wrapped
