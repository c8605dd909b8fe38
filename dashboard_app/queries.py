"""Read-only data for the dashboard, always scoped to one ``Viewer``.

Every function takes the viewer and filters through ``viewer.scope``, so an
unscoped query stands out in review. Results are plain dicts and lists, ready
for ``json_script`` and WebSocket messages.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.db.models import Count, Max, Sum
from django.utils import timezone

from dashboard_app.viewers import Viewer
from sampling_app.models import SamplingSession
from sessions_app.models import ClientSession, DailyUsage, Tenant
from sessions_app.quotas import quota_for, quota_status
from dispatch.registry import get_dispatcher, is_distributed
from training_app.models import Checkpoint, Operation, TrainingRun


logger = logging.getLogger(__name__)

LOSS_METRIC = "loss:sum"  # what the SDK returns as forward_backward(...).metrics["loss:sum"]
SPARKLINE_POINTS = 60


# -- training runs and their loss ---------------------------------------------------


def loss_points(run_id: str) -> list[dict[str, Any]]:
    """The run's training loss, one point per completed forward_backward, in seq order.

    ``step`` counts forward_backward calls (1, 2, ...): operations of a run
    execute in seq_id order, so a live point's step (see ``live``) is the same
    number this query gives it later.
    """
    rows = (
        Operation.objects.filter(training_run_id=run_id, kind=Operation.Kind.FORWARD_BACKWARD,
                                 status=Operation.Status.COMPLETED)
        .order_by("seq_id").values_list("seq_id", "metrics")
    )
    points = []
    for step, (seq_id, metrics) in enumerate(rows, start=1):
        if metrics and LOSS_METRIC in metrics:
            points.append({"step": step, "seq_id": seq_id, "loss": metrics[LOSS_METRIC]})
    return points


def _downsample(points: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    if len(points) <= n:
        return points
    stride = len(points) / n
    return [points[int(i * stride)] for i in range(n - 1)] + [points[-1]]


def run_state(run: TrainingRun) -> str:
    """starting → ready → stopped (by an operator, session still open) or released (session ended)."""
    if run.released:
        return "stopped" if run.session.status == ClientSession.Status.ACTIVE else "released"
    return "ready" if run.ready else "starting"


def runs(viewer: Viewer, limit: int = 50) -> list[dict[str, Any]]:
    rows = list(
        viewer.scope(TrainingRun.objects.all()).select_related("tenant", "session")
        .annotate(n_checkpoints=Count("checkpoints", distinct=True)).order_by("-created_at")[:limit]
    )
    out = []
    for run in rows:
        points = loss_points(run.id)
        out.append({
            "id": run.id, "name": run.display_name, "tenant": run.tenant.name, "base_model": run.base_model,
            "rank": run.lora_rank, "state": run_state(run), "steps": len(points), "last_loss": points[-1]["loss"] if points else None,
            "spark": [p["loss"] for p in _downsample(points, SPARKLINE_POINTS)],
            "checkpoints": run.n_checkpoints, "created_at": run.created_at, "last_request_at": run.last_request_at,
        })
    return out


def run_detail(run: TrainingRun) -> dict[str, Any]:
    """The run page's data: loss points and how many operations of each kind completed (or failed)."""
    rows = (
        Operation.objects.filter(training_run=run, status__in=[Operation.Status.COMPLETED, Operation.Status.FAILED])
        .values_list("kind", "status").annotate(n=Count("pk")).order_by()
    )
    done = {k: 0 for k in Operation.Kind.values if k != Operation.Kind.SAMPLE}
    failed = 0
    for kind, status, n in rows:
        if status == Operation.Status.FAILED:
            failed += n
        else:
            done[kind] = done.get(kind, 0) + n
    return {
        "id": run.id, "name": run.display_name, "tenant": run.tenant.name, "session": run.session_id,
        "base_model": run.base_model, "rank": run.lora_rank, "released": run.released, "ready": run.ready,
        "state": run_state(run),
        "done_by_kind": done, "failed": failed, "points": loss_points(run.id),
    }


# -- sessions, checkpoints, sampling --------------------------------------------------


def sessions(viewer: Viewer, limit: int = 30) -> list[ClientSession]:
    return list(
        viewer.scope(ClientSession.objects.all()).select_related("tenant")
        .annotate(n_runs=Count("training_runs", distinct=True), n_samplers=Count("sampling_sessions", distinct=True))
        .order_by("-created_at")[:limit]
    )


def checkpoints(viewer: Viewer, limit: int = 30) -> list[Checkpoint]:
    return list(viewer.scope(Checkpoint.objects.all()).select_related("tenant").order_by("-created_at")[:limit])


def checkpoint_storage_by_run(viewer: Viewer, limit: int = 12) -> list[dict[str, Any]]:
    """Bytes held per training run, largest first (a bar chart)."""
    rows = (
        viewer.scope(Checkpoint.objects.all()).values("training_run_id")
        .annotate(total=Sum("size_bytes"), n=Count("pk")).order_by("-total")[:limit]
    )
    names = {run.id: run.display_name for run in TrainingRun.objects.select_related("session")
             .filter(pk__in=[r["training_run_id"] for r in rows])}
    return [{"label": names.get(r["training_run_id"], r["training_run_id"]), "value": int(r["total"] or 0), "n": r["n"]}
            for r in rows]


def sampling_sessions(viewer: Viewer, limit: int = 20) -> list[SamplingSession]:
    return list(
        viewer.scope(SamplingSession.objects.all()).select_related("tenant", "session")
        .annotate(n_samples=Count("operations"), last_sample=Max("operations__finished_at"))
        .order_by("-created_at")[:limit]
    )


def sampling_activity(viewer: Viewer, minutes: int = 60) -> dict[str, list[int]]:
    """Sample requests finished per minute over the last ``minutes``, oldest first."""
    now = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = now - timedelta(minutes=minutes)
    requests = [0] * minutes
    failed = [0] * minutes
    rows = viewer.scope(Operation.objects.all()).filter(
        kind=Operation.Kind.SAMPLE, finished_at__gte=start
    ).values_list("finished_at", "status")
    for finished_at, status in rows:
        i = min(minutes - 1, int((finished_at - start).total_seconds() // 60))
        (failed if status == Operation.Status.FAILED else requests)[i] += 1
    return {"requests": requests, "failed": failed}


def usage_series(viewer: Viewer, days: int = 14) -> dict[str, Any]:
    """Tokens per day (training, prefill, sampled) and checkpoint bytes held, last ``days`` days, oldest first."""
    today = timezone.now().date()
    labels = [today - timedelta(days=days - 1 - i) for i in range(days)]
    rows = (
        viewer.scope(DailyUsage.objects.all()).filter(day__gte=labels[0]).values("day")
        .annotate(training=Sum("training_tokens"), prefill=Sum("prefill_tokens"), sampled=Sum("sampled_tokens"),
                  storage=Sum("checkpoint_bytes"), ops=Sum("operations"))
    )
    by_day = {r["day"]: r for r in rows}
    series: dict[str, list[int]] = defaultdict(list)
    held = 0  # checkpoint bytes are a level, not a flow: a day without changes keeps the day before's
    for day in labels:
        r = by_day.get(day, {})
        for name in ("training", "prefill", "sampled", "ops"):
            series[name].append(int(r.get(name) or 0))
        if r.get("storage") is not None:
            held = int(r["storage"])
        series["storage"].append(held)
    return {"labels": [d.strftime("%b %d") for d in labels], **series}


# -- queue and workers ------------------------------------------------------------------


def queue_depth() -> dict[str, int]:
    dispatcher = get_dispatcher()
    depth = getattr(dispatcher, "queue_depth", None)
    if callable(depth):
        try:
            return {k: int(v) for k, v in depth().items()}
        except Exception:  # a remote queue (Redis) may be unreachable: fall back to the database
            logger.warning("queue_depth() of %s failed; counting pending operations instead",
                           type(dispatcher).__name__, exc_info=True)
    pending = Operation.objects.filter(status=Operation.Status.PENDING).values_list("kind").annotate(n=Count("pk"))
    out = {"train": 0, "sample": 0}
    for kind, n in pending:
        out["sample" if kind == Operation.Kind.SAMPLE else "train"] += n
    return out


def rq_workers() -> list[dict[str, Any]]:
    """Workers registered in Redis (distributed mode), as lanes, with the age of their last heartbeat."""
    import django_rq
    from rq import Worker

    now = timezone.now()
    lanes = []
    for queue_name in settings.RQ_QUEUES:
        queue = django_rq.get_queue(queue_name)
        for worker in Worker.all(queue=queue):
            beat = worker.last_heartbeat
            if beat is not None and timezone.is_naive(beat):
                beat = timezone.make_aware(beat, dt_timezone.utc)
            lanes.append({"name": worker.name, "queue": queue_name, "state": str(worker.get_state()),
                          "heartbeat_age_s": (now - beat).total_seconds() if beat else None})
    return lanes


def worker_status(viewer: Viewer) -> dict[str, Any]:
    """Queue depth (all tenants: a count only) and what each worker lane is doing.

    A tenant sees how busy the shared workers are, but the tenant and kind of
    a running operation only when it is its own.
    """
    running = list(
        Operation.objects.filter(status=Operation.Status.RUNNING)
        .values("kind", "tenant_id", "tenant__name", "training_run_id", "sampling_session_id")
    )
    lanes: list[dict[str, Any]] = []
    if is_distributed():
        try:
            lanes = rq_workers()
        except Exception:
            logger.warning("could not list RQ workers", exc_info=True)
    if not lanes:  # the embedded dispatcher: one training lane and one sampling lane in this process
        lanes = [{"name": "train", "queue": "train", "state": "idle"},
                 {"name": "sample", "queue": "sample", "state": "idle"}]
    for lane in lanes:
        lane_kind = "sample" if "sample" in lane["queue"] else "train"
        mine = [op for op in running if (op["kind"] == "sample") == (lane_kind == "sample")]
        if mine and lane["state"] == "idle":
            lane["state"] = "busy"
        shown = [op for op in mine if viewer.may_see(op["tenant_id"])]
        lane["ops"] = [
            {"kind": op["kind"], "tenant": op["tenant__name"],
             "target": op["training_run_id"] or op["sampling_session_id"]} for op in shown
        ]
    own_pending = viewer.scope(Operation.objects.filter(status=Operation.Status.PENDING)).count()
    return {"queue": queue_depth(), "lanes": lanes, "pending_visible": own_pending, "running": len(running),
            "time": timezone.now().isoformat()}


def live_status(viewer: Viewer) -> dict[str, Any]:
    """What the overview's status socket pushes every few seconds."""
    return {"type": "status", **worker_status(viewer), "sampling": sampling_activity(viewer)}


# -- tenants (staff) ------------------------------------------------------------------


def tenant_summaries() -> list[dict[str, Any]]:
    """Per tenant: each limit against its use (staff only)."""
    out = []
    for tenant in Tenant.objects.all().select_related("quota"):
        lines = quota_status(tenant)
        out.append({
            "tenant": tenant, "own_quota": hasattr(tenant, "quota"), "max_lora_rank": quota_for(tenant).max_lora_rank,
            "lines": [{"label": ln.label, "used": ln.used, "limit": ln.limit, "bytes": ln.name == "max_checkpoint_bytes"}
                      for ln in lines],
        })
    return out
