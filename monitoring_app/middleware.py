"""Count and time every HTTP request (by URL route and status) and give it a request id."""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from monitoring_app import metrics
from monitoring_app.log_context import log_context

logger = logging.getLogger(__name__)

# A client-chosen X-Request-ID is kept only if it is short and plain (it goes into logs).
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _request_id(request: HttpRequest) -> str:
    given = request.headers.get("X-Request-ID", "")
    return given if _SAFE_ID.match(given) else "http-" + secrets.token_hex(8)


def _route(request: HttpRequest) -> str:
    # The URL pattern, not the path: ids in paths would make one time series per object.
    match = getattr(request, "resolver_match", None)
    return match.route if match is not None and match.route else "unmatched"


class RequestMetricsMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        request_id, start = _request_id(request), time.perf_counter()
        with log_context(request_id=request_id):
            response = self.get_response(request)
        return self._record(request, response, request_id, start)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        request_id, start = _request_id(request), time.perf_counter()
        with log_context(request_id=request_id):
            response = await self.get_response(request)
        return self._record(request, response, request_id, start)

    def _record(self, request: HttpRequest, response: HttpResponse, request_id: str, start: float) -> HttpResponse:
        route, method = _route(request), request.method or "-"
        metrics.HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        metrics.HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - start)
        response["X-Request-ID"] = request_id
        return response
