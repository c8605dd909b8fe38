"""The request id and tenant on every log line about a request or an operation.

HTTP requests get their id from ``X-Request-ID`` (or a new one) in
``RequestMetricsMiddleware``; a worker executing an operation uses the
operation's request id. The formatters here print both (``TUFT_LOG_FORMAT=json``
prints JSON lines).
"""

from __future__ import annotations

import contextvars
import json
import logging
from contextlib import contextmanager
from typing import Iterator

logger = logging.getLogger(__name__)

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("tuft_request_id", default="-")
tenant_var: contextvars.ContextVar[str] = contextvars.ContextVar("tuft_tenant", default="-")


@contextmanager
def log_context(request_id: str | None = None, tenant: object | None = None) -> Iterator[None]:
    """Within the block, log lines carry ``request_id``/``tenant``; both are restored after it."""
    tokens = [request_id_var.set(request_id or request_id_var.get()),
              tenant_var.set(str(tenant) if tenant is not None else tenant_var.get())]
    try:
        yield
    finally:
        tenant_var.reset(tokens[1])
        request_id_var.reset(tokens[0])


def bind_tenant(tenant: object) -> None:
    """Name the tenant for the rest of the current context (set once it is authenticated)."""
    tenant_var.set(str(tenant))


def _annotate(record: logging.LogRecord) -> None:
    # Formatting happens in the emitting thread, inside the context the line was logged in.
    request_id, tenant = request_id_var.get(), tenant_var.get()
    known = request_id != "-" or tenant != "-"
    record.__dict__.update(request_id=request_id, tenant=tenant,
                           context=f" [{request_id} tenant={tenant}]" if known else "")


class ContextFormatter(logging.Formatter):
    """A plain formatter that also knows ``%(context)s``: `` [req-… tenant=…]``, or nothing
    outside a request or operation (and ``%(request_id)s``, ``%(tenant)s``)."""

    def format(self, record: logging.LogRecord) -> str:
        _annotate(record)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, tenant, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        _annotate(record)
        entry = {
            "time": self.formatTime(record), "level": record.levelname, "logger": record.name,
            "request_id": record.__dict__["request_id"], "tenant": record.__dict__["tenant"],
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
