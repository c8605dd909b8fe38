"""The summary on a tenant's admin page: its keys, runs and sessions, with links to each list."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from django.db.models import Count, Q
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from sessions_app.models import ClientSession, Tenant

logger = logging.getLogger(__name__)


def _list_link(url_name: str, text: str, **filters: object) -> SafeString:
    return format_html('<a href="{}?{}">{}</a>', reverse(url_name), urlencode(filters), text)


def tenant_overview_html(tenant: Tenant) -> SafeString:
    keys = tenant.api_keys.aggregate(n=Count("pk"), active=Count("pk", filter=Q(revoked_at__isnull=True)))
    runs = tenant.training_runs.aggregate(n=Count("pk"), live=Count("pk", filter=Q(released=False)))
    sessions = tenant.sessions.aggregate(n=Count("pk"), active=Count("pk", filter=Q(status=ClientSession.Status.ACTIVE)))
    lines = [
        _list_link("admin:sessions_app_apikey_changelist", f"{keys['active']} active of {keys['n']} API keys",
                   tenant__id__exact=tenant.pk),
        _list_link("admin:training_app_trainingrun_changelist", f"{runs['live']} live of {runs['n']} training runs",
                   tenant__id__exact=tenant.pk),
        _list_link("admin:sessions_app_clientsession_changelist",
                   f"{sessions['active']} active of {sessions['n']} sessions", tenant__id__exact=tenant.pk),
        _list_link("admin:training_app_checkpoint_changelist", "checkpoints", tenant__id__exact=tenant.pk),
        _list_link("admin:sessions_app_dailyusage_changelist", "daily usage rows", tenant__id__exact=tenant.pk),
        format_html('<a href="{}">usage over time, runs and keys on the dashboard</a>',
                    reverse("dashboard:tenant", args=[tenant.pk])),
    ]
    return format_html('<ul class="tenant-overview">{}</ul>', format_html_join("", "<li>{}</li>", ((x,) for x in lines)))
