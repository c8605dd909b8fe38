"""``GET /metrics`` (Prometheus text format) and ``GET /api/v1/healthz``.

Who may read /metrics (it shows queue depths and totals of every tenant, so
it is not public): a staff user logged in to the admin; a scraper sending
``Authorization: Bearer $TUFT_METRICS_TOKEN`` when that setting is set; and
requests from the loopback interface unless ``TUFT_METRICS_LOOPBACK=0``
(set that behind a reverse proxy on the same host, where every request
arrives from 127.0.0.1).
"""

from __future__ import annotations

import hmac
import logging
from typing import Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import Metric

from monitoring_app.collectors import DatabaseCollector
from monitoring_app.health import run_checks
from tuft_project.exceptions import error_body

logger = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


class _ServerMetrics:
    """This process's counters plus the database-derived levels, as one scrape."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from DatabaseCollector().collect()


def may_read_metrics(request: HttpRequest) -> bool:
    token = settings.TUFT_METRICS_TOKEN
    auth = request.headers.get("Authorization", "")
    if token and auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip(), token):
        return True
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_staff:
        return True
    return settings.TUFT_METRICS_LOOPBACK and request.META.get("REMOTE_ADDR", "") in LOOPBACK


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not may_read_metrics(request):
        return JsonResponse(error_body(
            "metrics need a staff login, Authorization: Bearer $TUFT_METRICS_TOKEN, or a loopback client",
            "permission_denied"), status=403)
    return HttpResponse(generate_latest(_ServerMetrics()), content_type=CONTENT_TYPE_LATEST)  # type: ignore[arg-type]


def healthz_view(request: HttpRequest) -> JsonResponse:
    """200 ``{"status": "ok"}`` when every check passes, else 503 naming the failing parts.

    Public (load balancers and container health checks call it without a key);
    the details say which part is down, never anything about tenants.
    """
    results = run_checks()
    checks = {r.name: {"ok": r.ok, "detail": r.detail} for r in results}
    failing = [r.name for r in results if not r.ok]
    if failing:
        return JsonResponse({"status": "unavailable", "failing": failing, "checks": checks}, status=503)
    return JsonResponse({"status": "ok", "checks": checks})
