"""Redis plumbing of distributed mode: which Redis, queue names, enqueueing, signals.

Distributed mode is on when models.yaml has ``persistence: {mode: redis_url, ...}``
or ``REDIS_URL`` is set (the models.yaml block wins). Everything lives under a
namespace (models.yaml ``namespace``, else ``TUFT_REDIS_NAMESPACE``, default
``tuft``) so several deployments, or test runs, can share one Redis:

  {ns}-train            training "drain" jobs any worker may take
  {ns}-train@{worker}   drain jobs of runs whose state that worker holds (affinity)
  {ns}-sample           sample jobs
  {ns}:drain:{run}      "a drain job of this run is queued" (dedupes enqueues)
  {ns}:sample:{op}      "a job of this sample op is queued"
  {ns}:alive:{worker}   worker liveness, refreshed every maintenance tick
  {ns}:owner:{run}      the worker that last executed the run (affinity hint)
  {ns}:done             pub/sub channel: request ids of finished operations

Redis holds no state that matters: the database is the source of truth, so a
lost job or a restarted Redis only delays work until a worker's reaper
re-enqueues it (see workers.reaper).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import redis
from django.conf import settings
from django.core.signals import setting_changed

from tuft_project.runtime import get_config

logger = logging.getLogger(__name__)

# Jobs carry only ids as JSON (never pickle: STYLE.md).
SERIALIZER = "rq.serializers.JSONSerializer"
DRAIN_JOB = "workers.rq_worker.drain_run"
SAMPLE_JOB = "workers.rq_worker.run_sample"


@dataclass(frozen=True)
class Backend:
    """Where distributed mode's queues live and what a restart keeps."""

    redis_url: str
    namespace: str
    # persistence mode redis_url: an API restart recovers pending work instead
    # of failing it (training_app.recovery).
    persistent: bool
    # How long a worker's claim on a run or operation lasts without renewal;
    # a SIGKILLed worker's work is taken over after this long.
    lease_s: float
    # A queued-job marker older than this is assumed lost and re-enqueued.
    requeue_after_s: float

    @property
    def train_queue(self) -> str:
        return f"{self.namespace}-train"

    @property
    def sample_queue(self) -> str:
        return f"{self.namespace}-sample"

    def personal_queue(self, worker: str) -> str:
        return f"{self.namespace}-train@{worker}"

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))


@functools.cache
def get_backend() -> Backend | None:
    """The distributed back end, or None for embedded mode."""
    persistence = get_config().persistence
    lease_s = float(os.environ.get("TUFT_WORKER_LEASE_S", "30"))
    requeue = float(os.environ.get("TUFT_REQUEUE_AFTER_S", str(max(2 * lease_s, 10.0))))
    if persistence.mode == "redis_url" and persistence.redis_url:
        return Backend(persistence.redis_url, persistence.namespace, True, lease_s, requeue)
    if settings.REDIS_URL:
        namespace = os.environ.get("TUFT_REDIS_NAMESPACE", persistence.namespace or "tuft")
        return Backend(settings.REDIS_URL, namespace, False, lease_s, requeue)
    return None


def _reset(**kwargs: object) -> None:
    get_backend.cache_clear()
    connection.cache_clear()


setting_changed.connect(_reset)


def queue_config(backend: Backend) -> dict[str, object]:
    return {"URL": backend.redis_url, "DEFAULT_TIMEOUT": -1, "SERIALIZER": SERIALIZER}


def register_queues(backend: Backend, *extra: str) -> None:
    """Make the namespace's queues known to django-rq (dashboard, ``get_queue``).

    Queue names depend on models.yaml, which settings.py does not read, so they
    are added to ``settings.RQ_QUEUES`` here, once per process at start-up.
    """
    for name in (backend.train_queue, backend.sample_queue, *extra):
        settings.RQ_QUEUES.setdefault(name, queue_config(backend))


@functools.cache
def connection() -> redis.Redis:
    """This process's client for short commands (enqueue, markers, publish)."""
    backend = get_backend()
    assert backend is not None, "distributed mode is off"
    # Short timeouts: with Redis down, the API must answer (the op stays pending
    # in the database) instead of hanging a request thread.
    return redis.Redis.from_url(
        backend.redis_url, socket_connect_timeout=3, socket_timeout=5, health_check_interval=15,
    )


def get_queue(name: str):  # -> django_rq.queues.DjangoRQ
    import django_rq

    backend = get_backend()
    assert backend is not None
    register_queues(backend, name)
    return django_rq.get_queue(name, connection=connection(), commit_mode="auto")


def is_alive(backend: Backend, worker: str) -> bool:
    return bool(connection().exists(backend.key("alive", worker)))


def enqueue_drain(run_id: str, force: bool = False) -> bool:
    """Queue a drain job for ``run_id`` unless one is already queued.

    The job goes to the queue of the worker that holds the run's state if that
    worker is alive, else to the shared queue. Returns True if a job was added.
    Raises redis errors; callers decide whether that matters.
    """
    backend = get_backend()
    assert backend is not None
    conn = connection()
    owner = conn.get(backend.key("owner", run_id))
    queue = backend.train_queue
    if owner and is_alive(backend, owner.decode()):
        queue = backend.personal_queue(owner.decode())
    marker = backend.key("drain", run_id)
    queued_on = conn.get(marker)
    if queued_on is not None and _dead_worker_queue(backend, queued_on.decode()):
        force = True  # queued for a worker that died: that job will never run
    return _enqueue_once(backend, marker, queue, force, DRAIN_JOB, run_id, f"drain {run_id}")


def _dead_worker_queue(backend: Backend, queue: str) -> bool:
    prefix = backend.personal_queue("")
    return queue.startswith(prefix) and not is_alive(backend, queue[len(prefix):])


def enqueue_sample(request_id: str, force: bool = False) -> bool:
    backend = get_backend()
    assert backend is not None
    marker = backend.key("sample", request_id)
    return _enqueue_once(backend, marker, backend.sample_queue, force, SAMPLE_JOB, request_id,
                         f"sample {request_id}")


def _enqueue_once(backend: Backend, marker: str, queue: str, force: bool, func: str, arg: str,
                  description: str) -> bool:
    """Enqueue ``func(arg)`` on ``queue`` unless ``marker`` says such a job is already queued.

    The marker (holding the queue name) expires after ``requeue_after_s``, so a job
    lost with Redis is queued again by the reaper; it is removed if enqueueing fails.
    """
    conn = connection()
    if not conn.set(marker, queue, nx=not force, ex=int(backend.requeue_after_s) or 1):
        return False
    try:
        get_queue(queue).enqueue_call(
            func=func, args=(arg,), timeout=-1, result_ttl=0, failure_ttl=24 * 3600, description=description,
        )
    except Exception:
        conn.delete(marker)
        raise
    return True


def publish_done(request_id: str) -> None:
    """Tell API processes that ``request_id`` finished (wakes their long polls)."""
    backend = get_backend()
    assert backend is not None
    try:
        connection().publish(backend.key("done"), request_id)
    except redis.RedisError as exc:  # the API's completion sweeper still sees it within seconds
        logger.warning("could not publish completion of %s: %s", request_id, exc)
