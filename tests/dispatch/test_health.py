"""/healthz answers 503 when a dispatcher lane is not running (never "ok" with training dead)."""

from __future__ import annotations

import pytest
from django.test import Client

from monitoring_app import health


class Lanes:
    def __init__(self, alive: bool) -> None:
        self.alive = alive

    def healthy(self) -> bool:
        return self.alive


@pytest.mark.django_db
@pytest.mark.parametrize("alive, status", [(True, 200), (False, 503)])
def test_healthz_reports_the_lanes(monkeypatch: pytest.MonkeyPatch, alive: bool, status: int) -> None:
    monkeypatch.setattr(health, "is_distributed", lambda: False)  # embedded lanes, whatever models.yaml says
    monkeypatch.setattr(health, "get_dispatcher", lambda: Lanes(alive))
    response = Client().get("/api/v1/healthz")
    assert response.status_code == status
    assert response.json()["status"] == ("ok" if alive else "unavailable")
    if not alive:
        assert "workers" in response.json()["failing"]
