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
