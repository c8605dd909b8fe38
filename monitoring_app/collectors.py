"""Metrics read from the database (and Redis) when Prometheus scrapes: levels, not events.

These are the same in every process, so they are exported by the API
server's ``/metrics`` only (not by the workers' metrics ports).
"""

from __future__ import annotations

import logging
from typing import Iterator

from django.db.models import Count, Min, Sum
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from monitoring_app.health import alive_workers
from sampling_app.models import SamplingSession
from sessions_app.models import ClientSession
from training_app.models import Checkpoint, Operation, TrainingRun

logger = logging.getLogger(__name__)

LANES = ("train", "sample")


class DatabaseCollector:
    """A prometheus_client custom collector (``collect`` is called on every scrape)."""

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        active = GaugeMetricFamily("tuft_active", "Active objects: client sessions, training runs (each holds a "
                                   "LoRA adapter on a worker) and sampling sessions", labels=["object"])
        active.add_metric(["sessions"], ClientSession.objects.filter(status=ClientSession.Status.ACTIVE).count())
        active.add_metric(["training_runs"], TrainingRun.objects.filter(released=False).count())
        active.add_metric(["sampling_sessions"],
                          SamplingSession.objects.filter(session__status=ClientSession.Status.ACTIVE).count())
        yield active
        alive = alive_workers()
        workers = GaugeMetricFamily("tuft_workers_alive", "Worker processes (distributed) or embedded lanes "
                                    "alive; -1 when it cannot be known (Redis unreachable)")
        workers.add_metric([], -1 if alive is None else alive)
        yield workers
        stored = Checkpoint.objects.values("kind").annotate(n=Count("pk"), size=Sum("size_bytes"))
        count = GaugeMetricFamily("tuft_checkpoints", "Checkpoints stored, by kind", labels=["kind"])
        size = GaugeMetricFamily("tuft_checkpoint_bytes", "Bytes of checkpoints stored, by kind", labels=["kind"])
        by_kind = {row["kind"]: row for row in stored}
        for kind in Checkpoint.Kind.values:
            count.add_metric([kind], by_kind.get(kind, {}).get("n") or 0)
            size.add_metric([kind], by_kind.get(kind, {}).get("size") or 0)
        yield count
        yield size

    def _queues(self) -> Iterator[Metric]:
        now = timezone.now()
        depth = GaugeMetricFamily("tuft_queue_depth", "Operations waiting to run, by lane", labels=["lane"])
        running = GaugeMetricFamily("tuft_operations_running", "Operations running now, by lane", labels=["lane"])
        oldest = GaugeMetricFamily("tuft_queue_oldest_wait_seconds",
                                   "How long the oldest waiting operation of a lane has waited", labels=["lane"])
        rows = (Operation.objects.filter(status__in=[Operation.Status.PENDING, Operation.Status.RUNNING])
                .values("kind", "status").annotate(n=Count("pk"), first=Min("created_at")))
        counts = {(lane, status): 0 for lane in LANES for status in ("pending", "running")}
        firsts: dict[str, float] = {}
        for row in rows:
            lane = "sample" if row["kind"] == Operation.Kind.SAMPLE else "train"
            counts[lane, row["status"]] += row["n"]
            if row["status"] == Operation.Status.PENDING:
                waited = (now - row["first"]).total_seconds()
                firsts[lane] = max(firsts.get(lane, 0.0), waited)
        for lane in LANES:
            depth.add_metric([lane], counts[lane, "pending"])
            running.add_metric([lane], counts[lane, "running"])
            oldest.add_metric([lane], firsts.get(lane, 0.0))
        yield depth
        yield running
        yield oldest
