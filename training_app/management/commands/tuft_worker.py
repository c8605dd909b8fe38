"""``manage.py tuft_worker``: a model-resident RQ worker for distributed mode.

A thin wrapper around RQ's work loop with ``workers.rq_worker.TuftWorker``
(non-forking, no job timeout). Differences from plain ``rqworker``: it listens
on the namespace's queues by itself (its own affinity queue first), and it
outlives a Redis restart: when RQ's loop gives up on a lost connection, it
waits for Redis and starts the loop again with the same engine and models.
The first SIGTERM/SIGINT lets the current operation finish (at most
``TUFT_SHUTDOWN_TIMEOUT_S``, then it is handed back), hands the rest of its
run to other workers, logs each step and exits 0; a second one stops at once.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import redis
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from prometheus_client import start_http_server
from rq import worker_registration

from dispatch import queues
from dispatch.queues import get_backend
from tuft_project import gc_freeze
from workers.rq_worker import TuftWorker, current_runtime
from workers.runtime import default_worker_name, exit_worker

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run a distributed TuFT worker: executes queued training and sampling operations with resident models."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--name", help="worker name (default: hostname-pid); must be unique among live workers")
        parser.add_argument("--burst", action="store_true", help="exit once the queues are empty")
        parser.add_argument("--log-level", default="INFO")
        parser.add_argument(
            "--metrics-port", type=int, default=int(os.environ.get("TUFT_METRICS_PORT", "0")),
            help="serve this worker's Prometheus metrics (operations, tokens, queue wait) on this port "
                 "(default $TUFT_METRICS_PORT; 0 = off)",
        )

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        if get_backend() is None:
            raise CommandError(
                "distributed mode is off: set REDIS_URL, or persistence: {mode: redis_url, redis_url: ...} "
                "in models.yaml"
            )
        runtime = current_runtime(options["name"] or default_worker_name())
        if options["metrics_port"]:
            # Operations are counted where they finish: here, not in the API server.
            start_http_server(options["metrics_port"])
            logger.info("worker %s: metrics on port %d", runtime.name, options["metrics_port"])
        _wait_for_name(runtime)
        # Full GC passes stop the whole worker, lease renewal included; keep them off
        # start-up's objects and each loaded model's (tuft_project.gc_freeze).
        gc_freeze.enable("worker start-up")
        # Like django-rq's rqworker: never carry connections opened before the loop.
        for conn in connections.all():
            conn.close()
        while True:
            try:
                worker = TuftWorker([], name=runtime.name)
                _clear_stale_registration(worker)
                worker.work(burst=options["burst"], logging_level=options["log_level"])
                if options["burst"] or worker.shutdown_requested:
                    break
                logger.warning("worker %s: RQ loop ended unexpectedly; restarting it in 2 s", runtime.name)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("worker %s: Redis unavailable (%s); retrying in 2 s", runtime.name, exc)
            # Between loops a signal must stop the process the ordinary way.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            time.sleep(2.0)
        runtime.stop(drain_samples=bool(options["burst"]) and not runtime.stopping)
        exit_worker(runtime.name, 0, runtime.shutdown_started)


def _wait_for_name(runtime) -> None:  # type: ignore[no-untyped-def]
    """Refuse a name a live worker uses; wait out the liveness of a dead one (a restart after SIGKILL)."""
    key = runtime.backend.key("alive", runtime.name)
    deadline = time.monotonic() + runtime.backend.lease_s + 2
    while True:
        try:
            holder = queues.connection().get(key)
        except redis.RedisError:
            return  # no Redis yet: the work loop waits for it
        if holder is None or holder.decode() == runtime.identity:
            return
        if time.monotonic() > deadline:
            raise CommandError(f"a live worker named {runtime.name!r} ({holder.decode()}) exists; use another --name")
        logger.info("worker %s: waiting for the previous worker of this name (%s) to expire",
                    runtime.name, holder.decode())
        time.sleep(1.0)


def _clear_stale_registration(worker) -> None:  # type: ignore[no-untyped-def]
    """Drop RQ's record of a dead worker of the same name, which would block ``register_birth``.

    A SIGKILLed worker cannot register its death, and RQ keeps a busy worker's
    key for minutes. ``_wait_for_name`` has established that no other live
    process uses this name, so the record is stale.
    """
    try:
        if worker.connection.exists(worker.key) and not worker.connection.hexists(worker.key, "death"):
            logger.warning("worker %s: removing the stale registration of a dead worker of this name", worker.name)
            with worker.connection.pipeline() as pipe:
                worker_registration.unregister(worker, pipe)
                pipe.delete(worker.key)
                pipe.execute()
    except redis.RedisError:
        pass
