"""The process's Prometheus metrics that are counted as things happen.

Counted in the process that does the work: HTTP requests in the API server,
operations in whichever process finished them (the API server with the
embedded worker; each ``tuft_worker`` in distributed mode, which serves its
own ``/metrics`` on ``TUFT_METRICS_PORT``). Levels that live in the database
(queue depth, active sessions, checkpoint bytes) are read at scrape time by
``monitoring_app.collectors``.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

# Latencies from a millisecond (healthz) to minutes (a large sample on CPU).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

HTTP_REQUESTS = Counter(
    "tuft_http_requests", "HTTP requests answered, by URL route, method and status code",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "tuft_http_request_duration_seconds", "Time to answer an HTTP request (a long poll counts its wait)",
    ["route", "method"], buckets=_BUCKETS,
)
OPERATIONS = Counter(
    "tuft_operations", "Operations finished, by kind and outcome (completed, failed_user, failed_server)",
    ["kind", "outcome"],
)
QUEUE_WAIT = Histogram(
    "tuft_queue_wait_seconds", "Time an operation waited between submission and the start of its execution",
    ["lane"], buckets=_BUCKETS,
)
RUN_TIME = Histogram(
    "tuft_operation_duration_seconds", "Time an operation ran on a worker", ["kind"], buckets=_BUCKETS,
)
LONG_POLLS = Gauge(
    "tuft_long_polls_waiting", "retrieve_future requests waiting for their operation to finish",
)
TOKENS = Counter(
    "tuft_tokens", "Tokens processed, by base model and kind (trained, prefill, sampled)", ["base_model", "kind"],
)


def lane_of(kind: str) -> str:
    return "sample" if kind == "sample" else "train"


def on_operation_finished(sender: Any, operation: Any, metrics: dict[str, float], **kwargs: Any) -> None:
    """Receiver of ``training_app.signals.operation_finished`` (after the outcome is committed)."""
    op = operation
    if op.status == "completed":
        outcome = "completed"
    else:
        outcome = "failed_user" if op.error_category == "user" else "failed_server"
    OPERATIONS.labels(op.kind, outcome).inc()
    if op.started_at is not None:
        QUEUE_WAIT.labels(lane_of(op.kind)).observe(max(0.0, (op.started_at - op.created_at).total_seconds()))
        if op.finished_at is not None:
            RUN_TIME.labels(op.kind).observe(max(0.0, (op.finished_at - op.started_at).total_seconds()))
    if outcome != "completed":
        return
    if op.kind == "sample" and op.sampling_session is not None:
        prompt = _prompt_tokens(op)
        TOKENS.labels(op.sampling_session.base_model, "prefill").inc(prompt)
        TOKENS.labels(op.sampling_session.base_model, "sampled").inc(max(0, op.num_tokens - prompt))
    elif op.kind in ("forward_backward", "forward") and op.training_run is not None:
        TOKENS.labels(op.training_run.base_model, "trained").inc(op.num_tokens)


def _prompt_tokens(op: Any) -> int:
    """Prompt length of a stored SampleRequest (num_tokens counts prompt + sampled tokens)."""
    chunks = (op.request or {}).get("prompt", {}).get("chunks", [])
    return sum(len(c.get("tokens", [])) for c in chunks if isinstance(c, dict))
