"""Operators' HTTP client for the admin (httpx, no browser): log in, run actions, read pages."""

from __future__ import annotations

import re
from typing import Any, Iterator

import httpx
import pytest

from tests.browser.conftest import Staff, staff  # noqa: F401 - the shared superuser fixture
from tests.conftest import LiveServer

ACTION_CHECKBOX = "_selected_action"


class AdminClient:
    """A logged-in staff browser session over plain HTTP (cookies + CSRF token)."""

    def __init__(self, server: LiveServer, user: Staff) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=60, headers={"Accept": "text/html"})
        self.http.get("/admin/login/")
        r = self.post("/admin/login/", {"username": user.username, "password": user.password, "next": "/admin/"})
        assert r.status_code == 302, r.text[:500]

    def post(self, path: str, data: dict[str, Any]) -> httpx.Response:
        return self.http.post(path, data={"csrfmiddlewaretoken": self.http.cookies["csrftoken"], **data})

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def action(self, changelist: str, action: str, pks: list[str], confirm: bool) -> httpx.Response:
        """Pick ``action`` for ``pks`` on a changelist (the first POST), or confirm it (the second)."""
        data: dict[str, Any] = {"action": action, ACTION_CHECKBOX: pks}
        if confirm:
            data["confirm"] = "yes"
        else:
            data["index"] = "0"
        return self.post(changelist, data)

    def messages(self) -> str:
        """The text of the messages shown on the next admin page."""
        page = self.get("/admin/").text
        return " ".join(re.findall(r'<li class="(?:success|warning|error|info)">(.*?)</li>', page, re.S))


@pytest.fixture
def admin_client(server: LiveServer, staff: Staff) -> Iterator[AdminClient]:  # noqa: F811
    client = AdminClient(server, staff)
    yield client
    client.http.close()
