"""Error pages: HTML for people in a browser, JSON for the API and its clients.

Django calls these for errors no view handled (``handler404`` and friends in
``tuft_project.urls``). The Tinker API and any client that does not ask for
HTML keep the JSON bodies of ``tuft_project.exceptions``; a browser on the
dashboard or the admin gets a page with a way back.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from dashboard_app.viewers import viewer_for_request
from tuft_project.exceptions import error_body, json_404, json_500

logger = logging.getLogger(__name__)


def wants_html(request: HttpRequest) -> bool:
    return not request.path.startswith("/api/") and "text/html" in request.headers.get("Accept", "")


def _page(request: HttpRequest, status: int, title: str, message: str, *, with_viewer: bool = True) -> HttpResponse:
    viewer = None
    if with_viewer:
        try:
            viewer = viewer_for_request(request)
        except Exception:  # an error page must render even when the session store is the problem
            logger.warning("could not resolve the viewer for an error page", exc_info=True)
    return render(request, "dashboard/error.html",
                  {"viewer": viewer, "status": status, "title": title, "message": message}, status=status)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not wants_html(request):
        return json_404(request, exception)
    return _page(request, 404, "Not found",
                 "There is nothing here, or it belongs to another team. Check the address, or go back to "
                 "your dashboard.")


def forbidden(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not wants_html(request):
        return JsonResponse(error_body("forbidden", "forbidden"), status=403)
    return _page(request, 403, "Not allowed", "Your login does not give access to this page.")


def server_error(request: HttpRequest) -> HttpResponse:
    if not wants_html(request):
        return json_500(request)
    # No viewer lookup: the database may be what failed.
    return _page(request, 500, "Something went wrong",
                 "The server could not show this page. The error is in the server log; try again in a moment.",
                 with_viewer=False)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Django's CSRF refusal (settings.CSRF_FAILURE_VIEW): a page for browsers, JSON for the rest.

    API clients authenticate with a key and never need CSRF tokens; a plain
    view that accepts POST from a browser form (admin, dashboard) refuses a
    cross-site one here.
    """
    if not wants_html(request):
        return JsonResponse(error_body(f"forbidden: CSRF check failed ({reason})", "csrf_failed"), status=403)
    return _page(request, 403, "Not allowed",
                 "This form was sent without a valid security token. Reload the page and try again.")
