"""A confirmation step for admin actions that change live state (stop, revoke, deactivate, finish).

An admin action returns ``confirmation_page(...)`` on its first POST; the page
posts the same action and selection back with ``confirm=yes``, and only then
does the action act. Django's changelist routes that second POST to the action
(no ``index`` field), as it does for its own "delete selected".
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin
from django.contrib.admin import helpers
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

logger = logging.getLogger(__name__)

TEMPLATE = "admin/confirm_action.html"


def is_confirmed(request: HttpRequest) -> bool:
    return request.POST.get("confirm") == "yes"


def confirmation_page(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Model], *,
    action: str, title: str, consequences: list[str], button: str,
) -> TemplateResponse:
    """Ask before ``action`` acts on ``queryset``; ``consequences`` say what will happen, one line each."""
    opts = modeladmin.model._meta
    context: dict[str, Any] = {
        **modeladmin.admin_site.each_context(request),
        "title": title, "objects": list(queryset), "consequences": consequences, "button": button,
        "action": action, "opts": opts, "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "selected": [str(obj.pk) for obj in queryset],
    }
    return TemplateResponse(request, TEMPLATE, context)
