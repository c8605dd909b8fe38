"""Dashboard pages (server-rendered). Data comes from ``queries``; live parts over WebSockets.

Access: every page needs a viewer (staff or tenant, see ``viewers``); pages
marked ``staff_only`` answer 403 to a tenant. Another tenant's run is a 404,
the same as a run that does not exist.
"""

from __future__ import annotations

import io
import logging
from functools import wraps
from typing import Any, Callable
from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from dashboard_app import fragments, metrics, playground, queries, status
from dashboard_app.viewers import Viewer, log_in_tenant, log_out, viewer_for_request
from sessions_app.models import DailyUsage, Tenant
from sessions_app.quotas import quota_for, quota_status
from sessions_app.usage import write_usage_csv
from training_app import storage
from training_app.models import TrainingRun
from tuft_project.exceptions import ApiError, BadRequest, error_body

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponse]


def viewer_required(view: View) -> View:
    @wraps(view)
    @never_cache
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        viewer = viewer_for_request(request)
        if viewer is None:
            return HttpResponseRedirect(f"{reverse('dashboard:login')}?{urlencode({'next': request.get_full_path()})}")
        request.viewer = viewer  # type: ignore[attr-defined]
        return view(request, *args, **kwargs)

    return wrapper


def staff_only(view: View) -> View:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.viewer.is_staff:  # type: ignore[attr-defined]
            return render(request, "dashboard/forbidden.html", {"viewer": request.viewer}, status=403)  # type: ignore[attr-defined]
        return view(request, *args, **kwargs)

    return viewer_required(wrapper)


@require_http_methods(["GET", "POST"])
@never_cache
def login(request: HttpRequest) -> HttpResponse:
    """Tenants log in with an API key; staff use the admin login (linked from the page)."""
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        next_url = reverse("dashboard:overview")
    error = ""
    if request.method == "POST":
        if log_in_tenant(request, request.POST.get("api_key", "")) is not None:
            return HttpResponseRedirect(next_url)
        error = "That key is not valid (wrong, revoked, or its tenant is deactivated)."
    staff_login = f"{reverse('admin:login')}?{urlencode({'next': next_url})}"
    return render(request, "dashboard/login.html",
                  {"error": error, "next": next_url, "staff_login": staff_login}, status=401 if error else 200)


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    log_out(request)
    return HttpResponseRedirect(reverse("dashboard:login"))


def _viewer(request: HttpRequest) -> Viewer:
    return request.viewer  # type: ignore[attr-defined, no-any-return]


@viewer_required
def overview(request: HttpRequest) -> HttpResponse:
    viewer = _viewer(request)
    tables = fragments.overview_tables(viewer)
    context: dict[str, Any] = {
        **tables,
        "samplers": queries.sampling_sessions(viewer),
        "charts": {
            "usage": queries.usage_series(viewer),
            "storage": queries.checkpoint_storage_by_run(viewer),
            "status": queries.live_status(viewer),
            "sparks": tables["sparks"],
        },
    }
    if viewer.tenant is not None:
        context["quota_lines"] = quota_status(viewer.tenant)
        context["max_lora_rank"] = quota_for(viewer.tenant).max_lora_rank
    return render(request, "dashboard/overview.html", context)


def _access_run(viewer: Viewer, run_id: str) -> TrainingRun:
    """The viewer's run, or 404 (also for another tenant's run)."""
    run = viewer.scope(TrainingRun.objects.select_related("tenant", "session")).filter(pk=run_id).first()
    if run is None:
        raise Http404("no such training run")
    return run


@viewer_required
def run_detail(request: HttpRequest, run_id: str) -> HttpResponse:
    viewer = _viewer(request)
    run = _access_run(viewer, run_id)
    detail = queries.run_detail(run)
    checkpoints = list(run.checkpoints.order_by("-created_at"))
    return render(request, "dashboard/run.html", {
        "viewer": viewer, "run": run, "detail": detail, "checkpoints": checkpoints,
        "metrics": {"runs": [{"id": run.id, "name": run.display_name, **metrics.run_metrics(run.id)}]},
    })


@viewer_required
def run_metrics_json(request: HttpRequest, run_id: str) -> HttpResponse:
    run = _access_run(_viewer(request), run_id)
    return JsonResponse({"id": run.id, "name": run.display_name, **metrics.run_metrics(run.id)})


@viewer_required
def run_metrics_csv(request: HttpRequest, run_id: str) -> HttpResponse:
    run = _access_run(_viewer(request), run_id)
    response = HttpResponse(metrics.metrics_csv(metrics.run_metrics(run.id)), content_type="text/csv")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in run.id)
    response["Content-Disposition"] = f'attachment; filename="tuft-metrics-{safe}.csv"'
    return response


MAX_COMPARED = 8


@viewer_required
def compare(request: HttpRequest) -> HttpResponse:
    """Several runs' metrics on one chart (``?runs=<id>&runs=<id>``); runs the viewer may not see are skipped."""
    viewer = _viewer(request)
    wanted = request.GET.getlist("runs")[:MAX_COMPARED]
    found = {r.id: r for r in viewer.scope(TrainingRun.objects.select_related("session")).filter(pk__in=wanted)}
    runs = [found[i] for i in wanted if i in found]
    data = {"runs": [{"id": r.id, "name": r.display_name, **metrics.run_metrics(r.id)} for r in runs]}
    return render(request, "dashboard/compare.html", {"viewer": viewer, "runs": runs, "metrics": data})


@staff_only
def tenants(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/tenants.html",
                  {"viewer": _viewer(request), "tenants": queries.tenant_summaries()})


@staff_only
def tenant_detail(request: HttpRequest, tenant_id: int) -> HttpResponse:
    """One tenant as operators need it: usage over time, keys, runs and sessions."""
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None:
        raise Http404("no such tenant")
    scoped = Viewer(name=tenant.name, tenant=tenant)  # the tenant's own view of its data
    return render(request, "dashboard/tenant.html", {
        **fragments.overview_tables(scoped), "viewer": _viewer(request), "tenant": tenant,
        "keys": list(tenant.api_keys.order_by("-created_at")), "quota_lines": quota_status(tenant),
        "max_lora_rank": quota_for(tenant).max_lora_rank, "usage": queries.usage_series(scoped, days=30),
    })


@viewer_required
def playground_page(request: HttpRequest) -> HttpResponse:
    """Type a prompt, pick a model or checkpoint, see the tokens and their logprobs (tenants only)."""
    viewer = _viewer(request)
    options = playground.choices(viewer.tenant) if viewer.tenant is not None else []
    return render(request, "dashboard/playground.html", {
        "viewer": viewer, "choices": options, "max_tokens": playground.MAX_NEW_TOKENS,
        "max_chars": playground.MAX_PROMPT_CHARS})


def _tenant_json(view: Callable[[HttpRequest, Tenant], dict[str, Any]]) -> View:
    """A JSON endpoint of the tenant's dashboard: domain errors become their 4xx JSON, as in the API."""
    @wraps(view)
    @viewer_required
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        tenant = _viewer(request).tenant
        if tenant is None:
            return JsonResponse(error_body("the playground samples as a tenant: log in with an API key", "forbidden"),
                                status=403)
        try:
            return JsonResponse(view(request, tenant, *args, **kwargs))
        except ApiError as exc:
            return JsonResponse(error_body(exc.detail, exc.code), status=exc.status_code)

    return wrapper


@require_POST
@_tenant_json
def playground_sample(request: HttpRequest, tenant: Tenant) -> dict[str, Any]:
    try:
        max_tokens = int(request.POST.get("max_tokens", "32"))
        temperature = float(request.POST.get("temperature", "0"))
    except ValueError:
        raise BadRequest("max tokens and temperature must be numbers") from None
    op = playground.check_playground_sample(tenant, request.POST.get("model", ""), request.POST.get("prompt", ""),
                                            max_tokens, temperature)
    return {"request_id": op.request_id}


@_tenant_json
def playground_result(request: HttpRequest, tenant: Tenant, request_id: str) -> dict[str, Any]:
    return playground.playground_result(tenant, request_id)


@staff_only
def storage_page(request: HttpRequest) -> HttpResponse:
    """Disk used and free, checkpoint bytes on disk against recorded, and orphaned files to clean up."""
    if request.method == "POST":
        if request.POST.get("confirm") == "yes":
            n, size = storage.do_delete_orphans(f"staff {_viewer(request).name}")
            messages.success(request, f"Deleted {n} orphaned checkpoint director{'y' if n == 1 else 'ies'} "
                                      f"({filesizeformat(size)}).")
        return HttpResponseRedirect(reverse("dashboard:storage"))  # a reload never deletes again
    return render(request, "dashboard/storage.html", {
        "viewer": _viewer(request), "report": storage.storage_report(), "min_age_h": storage.ORPHAN_MIN_AGE_S / 3600})


@staff_only
def status_page(request: HttpRequest) -> HttpResponse:
    """Dispatch mode, queues and workers; kept current by the status socket."""
    viewer = _viewer(request)
    return render(request, "dashboard/status.html", {"viewer": viewer, **status.status_page(viewer)})


@viewer_required
def usage_csv(request: HttpRequest) -> HttpResponse:
    """The viewer's daily usage (a tenant: its own; staff: every tenant) as CSV."""
    rows = _viewer(request).scope(DailyUsage.objects.all()).select_related("tenant").order_by("day", "tenant__name")
    out = io.StringIO()
    write_usage_csv(rows, out)
    response = HttpResponse(out.getvalue(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="tuft-usage-{timezone.now().date()}.csv"'
    return response
