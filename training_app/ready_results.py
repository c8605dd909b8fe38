"""Answers of operations this process just finished, encoded once, for ``retrieve_future``.

Why: at 100 SDK clients a batch of up to 16 operations finishes at once, and
each one's long poll then read its operation from the database again on a
reader thread and encoded the answer on the event loop, while 16 new
submissions arrived (docs/performance.md, "Control plane under 100 concurrent
clients"). The lane that records an outcome now also stores the bytes
``retrieve_future`` will send, and the poll answers from them without a
database read or a thread hop.

What it holds: the answer (body bytes and content type) and the owning tenant
of each operation finished in this process during the last ``TTL_S`` seconds,
at most ``MAX_BYTES`` of bodies in all. An operation finished elsewhere (an RQ
worker in distributed mode), failed at submission, evicted or expired is simply
not found here and is read from the database as before, so the cache is an
optimisation only. Finished operations never change; the one way an answer
could go stale is the row being deleted, which retention does days later; an
admin deleting an operation within ``TTL_S`` of its completion may see it
answered for the rest of those seconds. The caller still authenticates every
request against the database and only gets an answer for its own tenant.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from django.conf import settings
from django.http import HttpResponse, JsonResponse

from training_app.models import Operation

TTL_S = 30.0
MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ReadyAnswer:
    tenant_id: int
    body: bytes
    content_type: str
    finished_at: float  # the store's clock (time.monotonic)

    def response(self) -> HttpResponse:
        return HttpResponse(self.body, content_type=self.content_type)


def render_operation(op: Operation) -> HttpResponse:
    """The answer to ``retrieve_future`` for a finished operation."""
    if op.status == Operation.Status.FAILED:
        return JsonResponse({"error": op.error or "operation failed", "category": op.error_category or "server"})
    if op.result_blob is not None:
        return HttpResponse(bytes(op.result_blob), content_type="application/x-protobuf")
    return JsonResponse(op.result or {})


class ReadyResults:
    def __init__(self, ttl_s: float = TTL_S, max_bytes: int = MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, ReadyAnswer] = OrderedDict()  # oldest first
        self._bytes = 0
        # Set where this process's own lanes run the operations (the embedded
        # dispatcher); an RQ worker process would only fill memory nobody reads.
        self.enabled = False

    def put(self, op: Operation) -> None:
        """Store the answer of ``op``, which has just been recorded as finished (committed)."""
        if not self.enabled or not op.is_done:
            return
        retention_s = settings.TUFT_OPERATION_RETENTION_DAYS * 86400
        if 0 < retention_s <= self.ttl_s:
            return  # retention could delete the row while its answer is still kept here
        rendered = render_operation(op)
        answer = ReadyAnswer(op.tenant_id, rendered.content, rendered["Content-Type"], self._clock())
        if len(answer.body) > self.max_bytes // 4:
            return  # one huge answer would evict everything else
        with self._lock:
            old = self._answers.pop(op.request_id, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._answers[op.request_id] = answer
            self._bytes += len(answer.body)
            self._evict(answer.finished_at)

    def get(self, request_id: str, tenant_id: int) -> ReadyAnswer | None:
        """The stored answer if ``tenant_id`` owns it and it is fresh; else None (read the database)."""
        now = self._clock()
        with self._lock:
            answer = self._answers.get(request_id)
            self._evict(now)
        if answer is None or answer.tenant_id != tenant_id or now - answer.finished_at > self.ttl_s:
            return None
        return answer

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()
            self._bytes = 0

    def _evict(self, now: float) -> None:
        while self._answers:
            request_id, oldest = next(iter(self._answers.items()))
            if now - oldest.finished_at <= self.ttl_s and self._bytes <= self.max_bytes:
                break
            del self._answers[request_id]
            self._bytes -= len(oldest.body)


# The process's one store (explicit registry, STYLE.md rule 12).
ready_results = ReadyResults()
