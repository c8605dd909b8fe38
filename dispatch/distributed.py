"""Distributed dispatch: the API enqueues on django-rq queues and returns at once.

The API process never loads a model. For a training operation it queues a
*drain* job for the operation's run (at most one queued per run, see
``queues.enqueue_drain``); the worker that takes it executes every ready
operation of that run in seq order (``workers.rq_worker.drain_run``). Sample
operations each get their own job. Jobs carry ids only; workers reload everything from
the database, which commits before the job is queued (``transaction.on_commit``
in training_app.actions).

If Redis is unreachable the operation stays recorded as pending and a worker's
reaper queues it once Redis is back: a client's future is delayed, never lost.
Workers announce finished operations on a pub/sub channel, which wakes the
long-polling ``retrieve_future`` requests of this process at once.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from dispatch.scheduler import Work
from dispatch import queues
from dispatch.completions import completion_hub

logger = logging.getLogger(__name__)


class RQDispatcher:
    """The API side of distributed mode (implements ``dispatch.Dispatcher``)."""

    def __init__(self, backend: queues.Backend) -> None:
        self.backend = backend
        queues.register_queues(backend)
        threading.Thread(target=self._listen, name="tuft-completions", daemon=True).start()
        logger.info("dispatching to RQ queues %s, %s at %s (persistence: %s)", backend.train_queue,
                    backend.sample_queue, _redacted(backend.redis_url),
                    "redis_url" if backend.persistent else "disabled")

    def submit_training(self, request_id: str, run_id: str, seq_id: int, next_seq_id: int,
                        work: Work | None = None) -> None:
        try:
            queues.enqueue_drain(run_id)
        except redis.RedisError as exc:
            logger.warning("could not queue %s of run %s (%s); it stays pending until Redis is back",
                           request_id, run_id, exc)

    def submit_sampling(self, request_id: str, work: Work | None = None) -> None:
        try:
            queues.enqueue_sample(request_id)
        except redis.RedisError as exc:
            logger.warning("could not queue sample %s (%s); it stays pending until Redis is back", request_id, exc)

    def release_run(self, run_id: str) -> None:
        # The run is marked released in the database; every worker holding its
        # adapter frees it at its next maintenance tick.
        pass

    def queue_depth(self) -> dict[str, int]:
        try:
            return {
                "train": queues.get_queue(self.backend.train_queue).count,
                "sample": queues.get_queue(self.backend.sample_queue).count,
            }
        except redis.RedisError:
            return {}

    def _listen(self) -> None:
        """Wake local long polls when a worker reports a finished operation."""
        channel = self.backend.key("done")
        while True:
            try:
                client = redis.Redis.from_url(self.backend.redis_url, socket_connect_timeout=3,
                                              health_check_interval=10)
                pubsub = client.pubsub()
                pubsub.subscribe(channel)
                confirmed = pubsub.get_message(timeout=5)  # published from here on reaches us
                if confirmed is None or confirmed.get("type") != "subscribe":
                    raise redis.ConnectionError(f"no subscription confirmation: {confirmed!r}")
                # Completions published before this subscription (start-up, or
                # while the connection was lost) reached nobody: every waiter
                # re-reads its operation once.
                completion_hub.notify_all()
                for message in pubsub.listen():
                    if message.get("type") == "message":
                        completion_hub.notify(message["data"].decode())
            except redis.RedisError as exc:
                # Meanwhile the completion sweeper (dispatch.completions) still wakes waiters.
                logger.warning("completion channel lost (%s); reconnecting", exc)
                time.sleep(1.0)


def _redacted(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1) if "://" in url else ("", url)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
