"""``manage.py tuft_worker``: a model-resident RQ worker for distributed mode.

A thin wrapper around RQ's work loop with ``training_app.workers.TuftWorker``
(non-forking, no job timeout). Differences from plain ``rqworker``: it listens
on the namespace's queues by itself (its own affinity queue first), and it
outlives a Redis restart: when RQ's loop gives up on a lost connection, it
waits for Redis and starts the loop again with the same engine and models.
The first SIGTERM/SIGINT lets the current job finish, then the worker exits.
"""

from __future__ import annotations

import logging
import signal
import time

import redis
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run a distributed TuFT worker: executes queued training and sampling operations with resident models."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--name", help="worker name (default: hostname-pid); must be unique among live workers")
        parser.add_argument("--burst", action="store_true", help="exit once the queues are empty")
        parser.add_argument("--log-level", default="INFO")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        from training_app.queues import get_backend
        from training_app.workers import TuftWorker, current_runtime, default_worker_name

        if get_backend() is None:
            raise CommandError(
                "distributed mode is off: set REDIS_URL, or persistence: {mode: redis_url, redis_url: ...} "
                "in models.yaml"
            )
        runtime = current_runtime(options["name"] or default_worker_name())
        # Like django-rq's rqworker: never carry connections opened before the loop.
        for conn in connections.all():
            conn.close()
        while True:
            try:
                worker = TuftWorker([], name=runtime.name)
                worker.work(burst=options["burst"], logging_level=options["log_level"])
                if options["burst"] or worker.shutdown_requested:
                    break
                logger.warning("worker %s: RQ loop ended unexpectedly; restarting it in 2 s", runtime.name)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("worker %s: Redis unavailable (%s); retrying in 2 s", runtime.name, exc)
            except ValueError as exc:  # "There exists an active worker named ..." (stale registration)
                logger.warning("worker %s: %s; retrying in 2 s", runtime.name, exc)
            # Between loops a signal must stop the process the ordinary way.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            time.sleep(2.0)
        runtime.stop()
        logger.info("worker %s stopped", runtime.name)
