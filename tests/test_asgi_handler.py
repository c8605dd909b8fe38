"""Which path each request takes through ``PooledASGIHandler`` (tuft_project.asgi_handler).

The behaviour behind it (a ready result answered while every API thread is
stuck; sync views working as before) is tested against a live server in
tests/api/test_long_poll.py and by the API suite as a whole.
"""

from __future__ import annotations

from tuft_project.asgi_handler import ASYNC, HOT, SYNC, route_kind


def test_retrieve_future_skips_the_sync_middleware_chain() -> None:
    assert route_kind("/api/v1/retrieve_future") == HOT


def test_sync_views_run_in_one_call_on_the_pool() -> None:
    for path in ("/api/v1/create_session", "/api/v1/forward_backward", "/api/v1/session_heartbeat",
                 "/api/v1/training_runs/sess-1:train:0", "/admin/", "/dashboard/"):
        assert route_kind(path) == SYNC, path


def test_other_async_views_take_djangos_own_path() -> None:
    assert route_kind("/oai/api/v1/completions") == ASYNC


def test_unknown_paths_get_djangos_answer_from_the_sync_chain() -> None:
    assert route_kind("/no/such/page") == SYNC
    assert route_kind("/api/v1/\x00") == SYNC


def test_a_hot_request_leaves_no_reference_cycle() -> None:
    """Each request is freed by reference counting, not left for a full GC pass.

    A full (generation 2) pass stops every thread, the event loop included
    (tuft_project.gc_freeze); a cycle per request made those passes frequent at
    100 clients. The request here is refused (no API key), which needs no database.
    """
    import asyncio
    import gc

    from django.core.handlers.asgi import ASGIRequest

    from tuft_project.asgi_handler import PooledASGIHandler

    handler = PooledASGIHandler(threads=1)
    scope = {"type": "http", "method": "POST", "path": "/api/v1/retrieve_future", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80)}

    async def one_request(disconnect_at_once: bool) -> int:
        answered = asyncio.Event()
        messages = [{"type": "http.request", "body": b'{"request_id": "x"}', "more_body": False}]
        statuses = []

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            if not disconnect_at_once:
                await answered.wait()  # the client hangs up once it has its answer
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            elif not message.get("more_body"):
                answered.set()

        await handler.handle(dict(scope), receive, send)
        return statuses[0] if statuses else 0

    async def requests() -> list[int]:
        return [await one_request(disconnect_at_once=i % 2 == 1) for i in range(10)]

    gc.collect()
    gc.disable()
    try:
        statuses = asyncio.run(requests())
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, ASGIRequest)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert 401 in statuses  # the view did run (a client that hung up at once may get no answer)
    assert left == []
