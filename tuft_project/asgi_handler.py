"""How daphne's HTTP requests reach Django: each request's sync work in one hop, on long-lived threads.

Why (measured and explained in docs/performance.md, "Control plane under load"):
Django's stock ``ASGIHandler`` runs every synchronous piece of a request as its
own ``sync_to_async`` call on a thread started for that request (and joined by
yet another new thread afterwards): the ``request_started`` signal, the request
and response hooks of each of the seven ``MiddlewareMixin`` middlewares, the
view, its rendering and ``response.close()`` — about 17 hand-overs between the
event loop and a thread per request, and two thread starts that block the event
loop until the new thread runs. Each hand-over waits for the GIL, which the
training lane holds between its torch kernels, so at 100 SDK clients a request
that does no work at all (a ready ``retrieve_future``) took seconds.

This handler keeps Django's behaviour (same middleware, same order, same
signals, same error pages) and changes only where the work runs:

* **sync views** (every DRF endpoint, admin, dashboard pages): the whole sync
  middleware chain, the view, the rendering and the ``request_started`` signal
  run in *one* call on one of ``TUFT_API_THREADS`` long-lived threads, as under
  a WSGI server; ``response.close()`` (``request_finished``) is a second call.
  The threads live as long as the process, so their database connections are
  kept (``CONN_MAX_AGE``) instead of being opened for every request;
* **hot async views** (marked with ``hot_async_view``: ``retrieve_future``) run
  on the event loop with only ``RequestMetricsMiddleware`` (metrics, the
  request id, log context) around them and the host check, no thread hop at
  all: they need no session, user, CSRF or clickjacking handling (they are
  ``csrf_exempt`` JSON endpoints authenticated by ``X-API-Key``) and do their
  database reads on their own reader threads;
* **other async views** (the OpenAI-compatible API) take Django's stock path.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse
from django.urls import get_resolver, set_script_prefix
from django.urls.exceptions import Resolver404

from monitoring_app.middleware import RequestMetricsMiddleware

logger = logging.getLogger(__name__)

_R = TypeVar("_R")
_V = TypeVar("_V", bound=Callable[..., Any])

SYNC, ASYNC, HOT = "sync", "async", "hot"


def hot_async_view(view: _V) -> _V:
    """Mark an async view to run on the event loop without the sync middleware chain.

    Only for JSON API endpoints that are ``csrf_exempt``, authenticate by API key
    themselves and need nothing from the session, auth, message, CSRF, security
    or clickjacking middleware (their responses carry no cookies or pages).
    """
    view.tuft_hot = True  # type: ignore[attr-defined]
    return view


@functools.lru_cache(maxsize=4096)
def route_kind(path_info: str) -> str:
    """SYNC, ASYNC or HOT for the view ``path_info`` resolves to (SYNC when none: Django answers 404)."""
    try:
        view = get_resolver().resolve(path_info).func
    except Resolver404:
        return SYNC
    except Exception:  # a path the resolver chokes on: let the sync chain produce Django's answer
        return SYNC
    if getattr(view, "tuft_hot", False):
        return HOT
    return ASYNC if asyncio.iscoroutinefunction(view) else SYNC


class PooledASGIHandler(ASGIHandler):
    """Django's ASGI handler with each request's sync work run in one call on a fixed thread pool."""

    def __init__(self, threads: int) -> None:
        super().__init__()  # the stock async middleware chain, for ASYNC views
        self._sync = BaseHandler()
        self._sync.load_middleware(is_async=False)  # the same middleware, as WSGI runs it
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tuft-api")
        # HOT views: metrics + request id, and Django's conversion of exceptions to
        # responses around each layer (as load_middleware wraps every middleware).
        self._hot_chain = convert_exception_to_response(
            RequestMetricsMiddleware(convert_exception_to_response(self._call_hot_view)))

    async def _in_pool(self, fn: Callable[..., _R], *args: Any) -> _R:
        # A copy of the loop's context per call, so that context variables set by
        # one request (log context, the tenant) never leak into the next on that thread.
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(ctx.run, fn, *args))

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = route_kind(_path_info(scope))
        if kind == ASYNC:
            await super().handle(scope, receive, send)
            return
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            if kind == SYNC:
                response = await self._in_pool(self._respond_sync, scope, body_file)
                try:
                    await self._send(response, send)
                finally:
                    await self._in_pool(response.close)  # request_finished: the thread's connections
            else:
                await self._respond_hot(scope, body_file, receive, send)
        finally:
            body_file.close()

    def _respond_sync(self, scope: dict[str, Any], body_file: Any) -> HttpResponse:
        """What a WSGI server does for one request, on a pool thread."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            return error_response
        response = self._sync.get_response(request)
        response._handler_class = self.__class__
        return response

    async def _send(self, response: HttpResponse, send: Any) -> None:
        try:
            await self.send_response(response, send)
        except asyncio.CancelledError:
            pass  # the client went away while we answered

    async def _respond_hot(self, scope: dict[str, Any], body_file: Any, receive: Any, send: Any) -> None:
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            await self._send(error_response, send)
            return

        async def respond() -> None:
            await self._send(await self._hot_chain(request), send)

        # As Django does: a client that disconnects cancels its (long-polling) view.
        tasks = [asyncio.create_task(self.listen_for_disconnect(receive)), asyncio.create_task(respond())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.wait(tasks)  # the cancelled one ends too; wait() never raises what they raised
        # Outcomes are read, not re-raised here: an exception raised in this frame
        # (the disconnect listener's RequestAborted, nearly every time) holds the frame
        # through its traceback, the frame the tasks, a task the exception: a reference
        # cycle that kept each request (~130 objects) alive until a full GC pass, which
        # stops every thread (tuft_project.gc_freeze). At 100 clients that was half of
        # the server's cyclic garbage.
        for task in tasks:
            error = None if task.cancelled() else task.exception()
            if error is not None and not isinstance(error, RequestAborted):
                raise error

    async def _call_hot_view(self, request: HttpRequest) -> HttpResponse:
        request.get_host()  # ALLOWED_HOSTS, as CommonMiddleware checks it (DisallowedHost -> 400)
        match = get_resolver().resolve(request.path_info)
        request.resolver_match = match
        return await match.func(request, *match.args, **match.kwargs)


def _path_info(scope: dict[str, Any]) -> str:
    """The request's ``path_info``, computed as ``ASGIRequest`` does."""
    script_name = get_script_prefix(scope)
    return scope["path"].removeprefix(script_name) if script_name else scope["path"]
