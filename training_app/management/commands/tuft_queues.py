"""``manage.py tuft_queues``: queue depth, worker liveness and unfinished work.

Reads Redis (queues, RQ's worker registry, TuFT's liveness keys) and the
database (operations by status, run leases). ``--json`` prints one JSON
object for scripts and monitoring. The same queues and workers are on
django-rq's dashboard at /django-rq/ (admin login required).
"""

from __future__ import annotations

import json
from typing import Any

import redis
from django.core.management.base import BaseCommand
from django.db.models import Count
from django.utils import timezone
from rq import Queue, Worker

from dispatch import queues
from training_app.models import Operation, TrainingRun


def snapshot() -> dict[str, Any]:
    ops = dict(
        Operation.objects.filter(status__in=[Operation.Status.PENDING, Operation.Status.RUNNING])
        .values_list("status").annotate(n=Count("pk")).values_list("status", "n")
    )
    now = timezone.now()
    leases = [
        {"run": run_id, "worker": owner, "expires_in_s": round((expires - now).total_seconds(), 1) if expires else None}
        for run_id, owner, expires in TrainingRun.objects.exclude(lease_owner="")
        .values_list("id", "lease_owner", "lease_expires_at")
    ]
    data: dict[str, Any] = {"mode": "embedded", "operations": {"pending": ops.get("pending", 0),
                                                               "running": ops.get("running", 0)},
                            "run_leases": leases}
    backend = queues.get_backend()
    if backend is None:
        return data
    data.update(mode="distributed", namespace=backend.namespace,
                persistence="redis_url" if backend.persistent else "disabled")
    try:
        conn = queues.connection()
        names = {backend.train_queue, backend.sample_queue}
        names |= {q.name for q in Queue.all(connection=conn) if q.name.startswith(backend.personal_queue(""))}
        data["queues"] = {name: Queue(name, connection=conn).count for name in sorted(names)}
        workers = []
        for worker in Worker.all(connection=conn):
            mine = [q.name for q in worker.queues if q.name in names or q.name.startswith(backend.namespace + "-")]
            if not mine:
                continue
            beat = worker.last_heartbeat
            workers.append({
                "name": worker.name, "state": worker.get_state(), "pid": worker.pid, "host": worker.hostname,
                "alive": queues.is_alive(backend, worker.name),
                "last_heartbeat_s_ago": round((now - beat).total_seconds(), 1) if beat else None,
                "jobs_done": worker.successful_job_count, "jobs_failed": worker.failed_job_count,
            })
        data["workers"] = sorted(workers, key=lambda w: w["name"])
        data["redis"] = "up"
    except redis.RedisError as exc:
        data["redis"] = f"unreachable: {exc}"
    return data


class Command(BaseCommand):
    help = "Show queue depth, worker liveness and unfinished operations."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        data = snapshot()
        if options["json"]:
            self.stdout.write(json.dumps(data, default=str))
            return
        out = self.stdout.write
        out(f"mode: {data['mode']}" + (f" (namespace {data['namespace']}, persistence {data['persistence']},"
                                        f" redis {data['redis']})" if data["mode"] == "distributed" else ""))
        ops = data["operations"]
        out(f"operations: {ops['pending']} pending, {ops['running']} running")
        for name, depth in data.get("queues", {}).items():
            out(f"queue {name}: {depth} queued")
        for w in data.get("workers", []):
            out(f"worker {w['name']} ({w['host']} pid {w['pid']}): {w['state']}, "
                f"{'alive' if w['alive'] else 'NOT ALIVE'}, last heartbeat {w['last_heartbeat_s_ago']} s ago, "
                f"{w['jobs_done']} jobs done, {w['jobs_failed']} failed")
        if data["mode"] == "distributed" and not data.get("workers"):
            out("no workers: start one with `python manage.py tuft_worker`")
        for lease in data["run_leases"]:
            out(f"run {lease['run']} leased by {lease['worker']} (expires in {lease['expires_in_s']} s)")
