"""The operators' status page: dispatch mode, queues and workers in one place.

Per lane (training, sampling): how many operations wait, how long the oldest
has waited, how long operations waited before starting in the last
``WINDOW_MIN`` minutes (mean and 95th percentile), and how many finished per
minute; per worker: its lane, state and, in distributed mode, the age of its
last heartbeat (RQ workers beat every few seconds; one silent for
``STALE_HEARTBEAT_S`` is shown as dead). Staff only: it shows every tenant's
running operations.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

from django.utils import timezone

from dashboard_app import queries
from dashboard_app.viewers import Viewer
from dispatch.registry import is_distributed
from training_app.models import Operation
from dispatch.queues import get_backend

logger = logging.getLogger(__name__)

WINDOW_MIN = 10
STALE_HEARTBEAT_S = 60.0
LANES = {"train": "Training", "sample": "Sampling"}


def _lane_of(kind: str) -> str:
    return "sample" if kind == Operation.Kind.SAMPLE else "train"


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def dispatch_mode() -> dict[str, Any]:
    backend = get_backend()
    if backend is None:
        return {"name": "embedded", "text": "Embedded: worker threads inside this server process (no Redis)."}
    host = backend.redis_url.split("@")[-1]  # never show a password in the URL
    return {"name": "distributed", "text": f"Distributed: RQ workers over Redis at {host}, namespace "
                                           f"{backend.namespace!r}; persistence {'on' if backend.persistent else 'off'}."}


def lane_stats() -> list[dict[str, Any]]:
    now = timezone.now()
    since = now - timedelta(minutes=WINDOW_MIN)
    depth = queries.queue_depth()
    waits: dict[str, list[float]] = {lane: [] for lane in LANES}
    done = {lane: 0 for lane in LANES}
    failed = {lane: 0 for lane in LANES}
    started = Operation.objects.filter(started_at__gte=since).values_list("kind", "created_at", "started_at")
    for kind, created_at, started_at in started.iterator():
        waits[_lane_of(kind)].append(max(0.0, (started_at - created_at).total_seconds()))
    finished = Operation.objects.filter(finished_at__gte=since).values_list("kind", "status")
    for kind, status in finished.iterator():
        (failed if status == Operation.Status.FAILED else done)[_lane_of(kind)] += 1
    oldest: dict[str, float | None] = {lane: None for lane in LANES}
    pending = Operation.objects.filter(status=Operation.Status.PENDING).values_list("kind", "created_at")
    for kind, created_at in pending.order_by("created_at").iterator():
        lane = _lane_of(kind)
        if oldest[lane] is None:
            oldest[lane] = (now - created_at).total_seconds()
    return [{
        "lane": lane, "label": label, "depth": depth.get(lane, 0), "oldest_wait_s": oldest[lane],
        "mean_wait_s": sum(waits[lane]) / len(waits[lane]) if waits[lane] else None,
        "p95_wait_s": _percentile(waits[lane], 0.95),
        "per_min": done[lane] / WINDOW_MIN, "failed_per_min": failed[lane] / WINDOW_MIN,
    } for lane, label in LANES.items()]


def workers() -> list[dict[str, Any]]:
    """Each worker with its lane, state and liveness."""
    if is_distributed():
        try:
            return queries.rq_workers()
        except Exception:
            logger.warning("could not list RQ workers", exc_info=True)
            return []
    # Embedded: the dispatcher's lane threads live in this process; a dead one would show here.
    alive = {t.name for t in threading.enumerate() if t.is_alive()}
    return [{"name": name, "queue": lane, "state": "alive" if name in alive else "not started",
             "heartbeat_age_s": None} for lane, name in (("train", "tuft-train"), ("sample", "tuft-sample"))]


def running_operations(viewer: Viewer) -> list[dict[str, Any]]:
    now = timezone.now()
    rows = viewer.scope(Operation.objects.filter(status=Operation.Status.RUNNING)).values(
        "kind", "tenant__name", "training_run_id", "sampling_session_id", "started_at", "worker")
    return [{"kind": r["kind"], "tenant": r["tenant__name"], "target": r["training_run_id"] or r["sampling_session_id"],
             "worker": r["worker"] or "embedded",
             "running_s": (now - r["started_at"]).total_seconds() if r["started_at"] else None} for r in rows]


def status_page(viewer: Viewer) -> dict[str, Any]:
    return {"mode": dispatch_mode(), "lanes": lane_stats(), "workers": workers(),
            "running": running_operations(viewer), "window_min": WINDOW_MIN, "stale_s": STALE_HEARTBEAT_S}
