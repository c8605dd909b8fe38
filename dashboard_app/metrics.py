"""A training run's metrics as a table: one row per step, for charts and export.

A step is one completed ``forward_backward`` (1, 2, ...; the same numbering as
the live loss points). Each row holds the wall time the step finished, the
tokens it trained on, every metric the loss reported (``loss:sum`` and the
loss function's own, e.g. ``ppo_clipped:mean``), and, from the ``optim_step``
that followed it, the learning rate and the optimizer's metrics. A metric a
step did not report is None (a gap in the chart, empty in CSV).
"""

from __future__ import annotations

import csv
import io
import logging
from typing import Any

from training_app.models import Operation

logger = logging.getLogger(__name__)

STEP, TIME, TOKENS, LEARNING_RATE = "step", "time", "tokens", "learning_rate"


def run_metrics(run_id: str) -> dict[str, Any]:
    """``{"columns": [...], "rows": [[...], ...]}``; ``time`` is seconds since the epoch (UTC).

    The caller checks that the viewer may see the run.
    """
    ops = (
        Operation.objects.filter(training_run_id=run_id, status=Operation.Status.COMPLETED,
                                 kind__in=[Operation.Kind.FORWARD_BACKWARD, Operation.Kind.OPTIM_STEP])
        .order_by("seq_id").values_list("kind", "metrics", "num_tokens", "finished_at", "request")
    )
    rows: list[dict[str, Any]] = []
    names: dict[str, None] = {}  # metric names in first-seen order
    for kind, metrics, num_tokens, finished_at, request in ops.iterator():
        metrics = metrics or {}
        if kind == Operation.Kind.FORWARD_BACKWARD:
            rows.append({STEP: len(rows) + 1, TIME: finished_at.timestamp() if finished_at else None,
                         TOKENS: num_tokens, **metrics})
        elif rows:  # an optim_step applies to the steps before it; an optim before any step has no row
            lr = ((request or {}).get("adam_params") or {}).get("learning_rate")
            rows[-1].update({**metrics, LEARNING_RATE: lr})
        for name in metrics:
            names.setdefault(name, None)
    columns = [STEP, TIME, TOKENS, *sorted(names, key=lambda n: (n != "loss:sum", n)), LEARNING_RATE]
    return {"columns": columns, "rows": [[row.get(c) for c in columns] for row in rows]}


def metrics_csv(table: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(table["columns"])
    for row in table["rows"]:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()
