"""WebSockets of the dashboard.

Both sockets authenticate from the session cookie (``viewers``) at the
handshake and re-check every ``RECHECK_S`` seconds, so a revoked key, a
deactivated tenant or a logout closes them. A tenant may subscribe only to
its own runs; anything else is refused at the handshake (the browser sees a
failed connection and never receives a message).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.template.loader import render_to_string

from dashboard_app import fragments, live, queries, status
from dashboard_app.viewers import Viewer, viewer_for_session_key
from training_app.models import TrainingRun

logger = logging.getLogger(__name__)

RECHECK_S = 2.0
CLOSE_UNAUTHENTICATED = 4401


class _DashboardSocket(AsyncJsonWebsocketConsumer):
    viewer: Viewer | None = None

    async def _resolve_viewer(self) -> Viewer | None:
        session = self.scope.get("session")
        return await database_sync_to_async(viewer_for_session_key)(getattr(session, "session_key", None))

    async def connect(self) -> None:
        live.remember_server_loop()
        self.viewer = await self._resolve_viewer()
        if self.viewer is None or not await self.authorise(self.viewer):
            logger.info("dashboard socket refused: %s (viewer %s)", self.scope.get("path"),
                        self.viewer.name if self.viewer else None)
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        await self.accept()
        await self.start()
        self._ticker = asyncio.create_task(self._tick_forever())

    async def disconnect(self, code: int) -> None:
        ticker = getattr(self, "_ticker", None)
        if ticker is not None:
            ticker.cancel()
        await self.stop()

    async def _tick_forever(self) -> None:
        try:
            while True:
                await asyncio.sleep(RECHECK_S)
                viewer = await self._resolve_viewer()
                if viewer is None or viewer != self.viewer:
                    await self.close(code=CLOSE_UNAUTHENTICATED)
                    return
                await self.tick()
        except asyncio.CancelledError:
            pass

    async def authorise(self, viewer: Viewer) -> bool:
        return True

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def tick(self) -> None: ...


class RunSocket(_DashboardSocket):
    """``/ws/dashboard/runs/<run_id>/``: a snapshot of the loss curve, then each new point."""

    async def authorise(self, viewer: Viewer) -> bool:
        self.run_id = self.scope["url_route"]["kwargs"]["run_id"]

        def allowed() -> bool:
            run = TrainingRun.objects.filter(pk=self.run_id).only("tenant_id").first()
            return run is not None and viewer.may_see(run.tenant_id)

        return await database_sync_to_async(allowed)()

    async def start(self) -> None:
        self.group = live.run_group(self.run_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        # Sent after joining the group: a point finishing in between arrives twice
        # (the page keeps one per step) rather than never.
        points = await database_sync_to_async(queries.loss_points)(self.run_id)
        await self.send_json({"type": "snapshot", "run_id": self.run_id, "points": points})
        self.fingerprint = await database_sync_to_async(fragments.run_fingerprint)(self.run_id)

    async def tick(self) -> None:
        """Push the run's state and checkpoints card when they changed (also from other processes)."""
        fingerprint = await database_sync_to_async(fragments.run_fingerprint)(self.run_id)
        if fingerprint == self.fingerprint:
            return
        self.fingerprint = fingerprint
        update = await database_sync_to_async(fragments.run_update)(self.run_id)
        if update is not None:
            await self.send_json(update)

    async def stop(self) -> None:
        group = getattr(self, "group", None)
        if group is not None:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def loss_point(self, event: dict[str, Any]) -> None:
        await self.send_json(event)

    async def run_op(self, event: dict[str, Any]) -> None:
        await self.send_json(event)

    async def run_released(self, event: dict[str, Any]) -> None:
        """Sent the moment the run is released; the next tick brings its final state and checkpoints."""
        await self.send_json(event)


class StatusSocket(_DashboardSocket):
    """``/ws/dashboard/status/``: queue depth, worker lanes and sampling activity every tick,
    and the overview's runs, checkpoints and sessions tables whenever they changed."""

    fingerprint: fragments.Fingerprint | None = None

    async def start(self) -> None:
        # The staff status page (?page=status) also gets its lane and worker tables each tick.
        self.status_page = b"page=status" in self.scope.get("query_string", b"")
        await self.tick()

    async def tick(self) -> None:
        assert self.viewer is not None
        await self.send_json(await database_sync_to_async(queries.live_status)(self.viewer))
        fingerprint = await database_sync_to_async(fragments.overview_fingerprint)(self.viewer)
        if fingerprint != self.fingerprint:  # always on connect: the page may be older than the socket
            await self.send_json(await database_sync_to_async(fragments.overview_update)(self.viewer))
            self.fingerprint = fingerprint
        if self.status_page and self.viewer.is_staff:
            await self.send_json(await database_sync_to_async(status_update)(self.viewer))


def status_update(viewer: Viewer) -> dict[str, Any]:
    return {"type": "dispatch", "html": render_to_string("dashboard/_status_detail.html", status.status_page(viewer))}
