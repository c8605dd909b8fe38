"""Server-rendered pieces of the pages that the sockets push again when they change.

The overview's runs, checkpoints and sessions tables and a run page's state
and checkpoints card are rendered by the same templates as the first page
load, so the live view and a reload never disagree. Each socket tick compares
a cheap fingerprint of the viewer's data (a few aggregates) with the last one
it sent, and renders and sends the pieces only when it moved. Polling the
database (rather than waiting for events) sees work finished by RQ workers in
other processes too.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import Count, Max, Q
from django.template.loader import render_to_string

from dashboard_app import queries
from dashboard_app.viewers import Viewer
from sessions_app.models import ClientSession
from training_app.models import Checkpoint, Operation, TrainingRun

logger = logging.getLogger(__name__)

Fingerprint = tuple[Any, ...]


def overview_fingerprint(viewer: Viewer) -> Fingerprint:
    """Changes whenever an operation finishes, a run is created or released, a checkpoint or session changes."""
    ops = viewer.scope(Operation.objects.filter(training_run__isnull=False)).aggregate(last=Max("finished_at"))
    runs = viewer.scope(TrainingRun.objects.all()).aggregate(n=Count("pk"), released=Count("pk", filter=Q(released=True)))
    ckpts = viewer.scope(Checkpoint.objects.all()).aggregate(n=Count("pk"), last=Max("created_at"))
    sessions = viewer.scope(ClientSession.objects.all()).aggregate(
        n=Count("pk"), active=Count("pk", filter=Q(status=ClientSession.Status.ACTIVE)))
    return (ops["last"], runs["n"], runs["released"], ckpts["n"], ckpts["last"], sessions["n"], sessions["active"])


def overview_tables(viewer: Viewer) -> dict[str, Any]:
    """The context of the overview's live tables (also used for the first render)."""
    runs = queries.runs(viewer)
    return {
        "viewer": viewer, "runs": runs, "sparks": {run["id"]: run["spark"] for run in runs},
        "checkpoints": queries.checkpoints(viewer), "sessions": queries.sessions(viewer),
    }


def overview_update(viewer: Viewer) -> dict[str, Any]:
    context = overview_tables(viewer)
    return {
        "type": "overview",
        "runs_html": render_to_string("dashboard/_runs_table.html", context),
        "checkpoints_html": render_to_string("dashboard/_checkpoints_table.html", context),
        "sessions_html": render_to_string("dashboard/_sessions_table.html", context),
        "sparks": context["sparks"],
    }


def run_fingerprint(run_id: str) -> Fingerprint:
    run = TrainingRun.objects.filter(pk=run_id).values("released", "ready", "session__status").first()
    ckpts = Checkpoint.objects.filter(training_run_id=run_id).aggregate(n=Count("pk"), last=Max("created_at"))
    return (tuple(run.values()) if run else None, ckpts["n"], ckpts["last"])


def run_update(run_id: str) -> dict[str, Any] | None:
    run = TrainingRun.objects.select_related("session").filter(pk=run_id).first()
    if run is None:
        return None
    checkpoints = list(run.checkpoints.order_by("-created_at"))
    return {
        "type": "run.summary", "state": queries.run_state(run),
        "checkpoints_html": render_to_string("dashboard/_run_checkpoints.html", {"checkpoints": checkpoints}),
    }
