"""Live events: finished operations pushed to the dashboard's WebSockets.

Workers send ``training_app.signals.operation_finished`` after committing an
outcome; ``on_operation_finished`` turns a completed forward_backward into a
loss point for the run's group. Two channel layers:

* in-memory (default, embedded worker): the worker is a thread in the daphne
  process, but the layer's queues belong to daphne's event loop and are not
  thread-safe, so the send is handed to that loop (remembered when the first
  socket connects; before that nobody is listening);
* Redis (``REDIS_URL``, RQ workers in other processes): a plain blocking send.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

from dashboard_app.queries import LOSS_METRIC
from training_app.models import Operation

logger = logging.getLogger(__name__)

_server_loop: asyncio.AbstractEventLoop | None = None


def remember_server_loop() -> None:
    """Call from async code running on the server's loop (a consumer's connect)."""
    global _server_loop
    _server_loop = asyncio.get_running_loop()


def run_group(run_id: str) -> str:
    # Group names allow only [a-zA-Z0-9_.-] (< 100 chars); run ids contain ':'.
    return "run." + hashlib.sha256(run_id.encode()).hexdigest()[:40]


def publish(group: str, message: dict[str, Any]) -> None:
    """Send ``message`` to ``group`` from any thread, never blocking on the server loop."""
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, InMemoryChannelLayer):
        loop = _server_loop
        if loop is None or loop.is_closed():
            return  # no socket has ever connected in this process
        asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
    else:
        async_to_sync(layer.group_send)(group, message)


def loss_event(op: Operation, metrics: dict[str, float]) -> dict[str, Any] | None:
    """The ``loss.point`` message for a completed forward_backward, else None."""
    if (op.kind != Operation.Kind.FORWARD_BACKWARD or op.status != Operation.Status.COMPLETED
            or op.training_run_id is None or LOSS_METRIC not in metrics):
        return None
    # Operations of a run finish in seq order, so this count is the point's final step number.
    step = Operation.objects.filter(
        training_run_id=op.training_run_id, kind=Operation.Kind.FORWARD_BACKWARD,
        status=Operation.Status.COMPLETED, seq_id__lte=op.seq_id,
    ).count()
    return {"type": "loss.point", "run_id": op.training_run_id,
            "point": {"step": step, "seq_id": op.seq_id, "loss": metrics[LOSS_METRIC]}}


def may_have_listeners(group: str) -> bool:
    """False when no WebSocket of this process is in ``group`` (in-memory layer only).

    Lets the worker skip building an event nobody would receive: a loss point costs
    a COUNT over the run's finished steps, on the training lane, per forward_backward.
    With Redis the sockets live in other processes, so the answer is always True.
    """
    layer = get_channel_layer()
    if layer is None:
        return False
    if isinstance(layer, InMemoryChannelLayer):
        # A plain read of the layer's dict from a worker thread: at worst it misses a
        # socket that joins at this instant, which loads the run's points on connect anyway.
        return _server_loop is not None and bool(layer.groups.get(group))
    return True


def on_operation_finished(sender: Any, operation: Operation, metrics: dict[str, float], **kwargs: Any) -> None:
    """Receiver of ``operation_finished`` (runs in the worker, after the commit)."""
    if operation.training_run_id is None or not may_have_listeners(run_group(operation.training_run_id)):
        return
    event = loss_event(operation, metrics)
    if event is None:  # other operations of the run: let its page refresh its counters
        event = {"type": "run.op", "run_id": operation.training_run_id, "kind": operation.kind,
                 "status": operation.status}
    try:
        publish(run_group(operation.training_run_id), event)
    except Exception:  # the dashboard must never fail training
        logger.warning("could not publish %s of run %s", event["type"], operation.training_run_id, exc_info=True)


def on_run_released(sender: Any, run_id: str, **kwargs: Any) -> None:
    """Receiver of ``run_released``: tell an open run page at once (it then stops saying "live")."""
    try:
        publish(run_group(run_id), {"type": "run.released", "run_id": run_id})
    except Exception:  # the dashboard must never fail a release
        logger.warning("could not publish the release of run %s", run_id, exc_info=True)
