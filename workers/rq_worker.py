"""The model-resident RQ worker and its job entry points.

``TuftWorker`` is an RQ ``SimpleWorker``: jobs run in the worker process itself
(no fork per job, so CUDA state and the loaded base model survive from job to
job) and no timeout signal can interrupt a step (``NoDeathPenalty``). Start it
with ``python manage.py tuft_worker`` (or django-rq's ``rqworker`` with
``--worker-class workers.rq_worker.TuftWorker``). The API side queues
``drain_run`` and ``run_sample`` jobs (``dispatch.queues``).
"""

from __future__ import annotations

import logging
import signal
import threading

import redis
from rq.timeouts import BaseDeathPenalty
from rq.worker import SimpleWorker

from dispatch import queues
from workers.runtime import WorkerRuntime, default_worker_name

logger = logging.getLogger(__name__)


class NoDeathPenalty(BaseDeathPenalty):
    """Never interrupt a job: a step cut in half by SIGALRM would corrupt nothing
    (outcomes are committed atomically) but would waste the work and retry forever."""

    def setup_death_penalty(self) -> None:
        pass

    def cancel_death_penalty(self) -> None:
        pass


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def current_runtime(name: str | None = None) -> WorkerRuntime:
    """The process's runtime (an explicit registry: one per worker process)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = WorkerRuntime(name or default_worker_name())
        return _runtime


class TuftWorker(SimpleWorker):
    """A non-forking RQ worker that keeps the base model and adapters resident."""

    death_penalty_class = NoDeathPenalty
    # Reconnect quickly after a Redis restart.
    max_connection_wait_time = 5.0

    def __init__(self, queues_: object, *args: object, **kwargs: object) -> None:
        runtime = current_runtime(str(kwargs.get("name") or default_worker_name()))
        backend = runtime.backend
        given = queues_ if isinstance(queues_, (list, tuple)) else [queues_]
        names = [q if isinstance(q, str) else q.name for q in given]  # type: ignore[attr-defined]
        # Its own queue first (runs whose state it holds), then the shared ones.
        wanted = [backend.personal_queue(runtime.name), backend.train_queue, backend.sample_queue]
        names = wanted + [n for n in names if n not in wanted]
        kwargs["name"] = runtime.name
        kwargs["serializer"] = queues.SERIALIZER  # jobs carry JSON, never pickle
        if kwargs.get("connection") is None:
            kwargs["connection"] = redis.Redis.from_url(backend.redis_url, socket_connect_timeout=5)
        kwargs.setdefault("worker_ttl", 60)
        super().__init__(names, *args, **kwargs)  # type: ignore[arg-type]
        self.runtime = runtime
        self.shutdown_requested = False

    def request_stop(self, signum: int, frame: object) -> None:
        # RQ only records a stop that arrives mid-job; tuft_worker must also know
        # about one that arrived while idle, or it would start the loop again.
        self.shutdown_requested = True
        self.runtime.stopping = True
        self.runtime.start_shutdown_watchdog(signal.Signals(signum).name)
        super().request_stop(signum, frame)

    def work(self, *args: object, **kwargs: object) -> bool:
        self.runtime.start()
        return super().work(*args, **kwargs)  # type: ignore[arg-type]

    def heartbeat(self, timeout: int | None = None, pipeline: object | None = None) -> None:
        # After a Redis restart the worker's registration is gone: register again
        # so that dashboards and `manage.py tuft_queues` see it.
        if pipeline is None and self.birth_date is not None and not self.connection.exists(self.key):
            logger.warning("worker %s: registration lost (Redis restarted?); registering again", self.name)
            self.register_birth()
        super().heartbeat(timeout, pipeline)  # type: ignore[arg-type]


# -- job entry points (run inside a TuftWorker) -----------------------------------


def drain_run(run_id: str) -> None:
    """RQ job: execute the ready operations of one training run."""
    runtime = current_runtime()
    runtime.start()  # a no-op in TuftWorker, which started it before its first job
    runtime.drain(run_id)


def run_sample(request_id: str) -> None:
    """RQ job: execute one sample operation."""
    runtime = current_runtime()
    runtime.start()
    runtime.sample(request_id)
