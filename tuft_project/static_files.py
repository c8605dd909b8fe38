"""Static files served by the server process itself (see tuft_project.asgi)."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import SuspiciousOperation
from django.http import Http404

logger = logging.getLogger(__name__)


class StaticFilesHandler(ASGIStaticFilesHandler):
    """Django's handler, but a path that escapes the static directory is a 404.

    Django raises ``SuspiciousFileOperation`` for ``/static/%2e%2e/...`` and its
    handler only turns ``Http404`` into a response, so the request became a 500.
    """

    def serve(self, request: Any) -> Any:
        try:
            return super().serve(request)
        except SuspiciousOperation as exc:
            logger.info("refused static path %r: %s", request.path, exc)
            raise Http404("not found") from None
