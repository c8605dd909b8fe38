"""WebSocket routes, behind a same-origin check.

The sockets authenticate with the session cookie, which a browser also sends
when another site opens a socket to us (cross-site WebSocket hijacking), so
the handshake's Origin must be this server (or one of
``CSRF_TRUSTED_ORIGINS``, e.g. behind a TLS proxy). A handshake without an
Origin is refused too: every browser sends one, and the dashboard's sockets
have no other clients.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.urls import path

from dashboard_app.consumers import RunSocket, StatusSocket

logger = logging.getLogger(__name__)

websocket_urlpatterns = [
    path("ws/dashboard/status/", StatusSocket.as_asgi()),
    path("ws/dashboard/runs/<str:run_id>/", RunSocket.as_asgi()),
]


def origin_allowed(origin: str | None, host: str | None) -> bool:
    if not origin:
        return False
    if origin in getattr(settings, "CSRF_TRUSTED_ORIGINS", []):
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == (host or "").lower()


class SameOriginValidator:
    """ASGI middleware: refuse a WebSocket handshake whose Origin is another site."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            headers = {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope.get("headers", [])}
            if not origin_allowed(headers.get("origin"), headers.get("host")):
                logger.warning("refused WebSocket %s from origin %s", scope.get("path"), headers.get("origin"))
                await receive()  # the websocket.connect event, then deny the handshake
                await send({"type": "websocket.close", "code": 4403})
                return None
        return await self.app(scope, receive, send)
