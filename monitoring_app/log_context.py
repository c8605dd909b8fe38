"""The request id and tenant on every log line about a request or an operation.

HTTP requests get their id from ``X-Request-ID`` (or a new one) in
``RequestMetricsMiddleware``; a worker executing an operation uses the
operation's request id. ``LogContextFilter`` copies both onto each record, so
the formatter can print them (``TUFT_LOG_FORMAT=json`` prints JSON lines).
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


class LogContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.tenant = tenant_var.get()
        # For the plain format: " [req-… tenant=…]", or nothing outside a request or operation.
        known = record.request_id != "-" or record.tenant != "-"
        record.context = f" [{record.request_id} tenant={record.tenant}]" if known else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, tenant, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record), "level": record.levelname, "logger": record.name,
            "request_id": getattr(record, "request_id", "-"), "tenant": getattr(record, "tenant", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
