"""Who is looking at the dashboard: a staff user, or one tenant.

Staff log in with their Django account (the admin login) and see everything.
A tenant logs in with one of its API keys (the same ``tml-`` key the SDK
uses); the session stores only the key's id, and every request and every
WebSocket check looks the key up again, so revoking the key or deactivating
the tenant logs the browser out at once. One browser session holds one
identity: logging in as a tenant ends a staff login and vice versa.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import import_module
from typing import Any, TypeVar

from django.conf import settings
from django.contrib import auth
from django.contrib.auth import get_user_model
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.middleware.csrf import rotate_token
from django.utils.crypto import constant_time_compare

from sessions_app.authentication import tenant_for_key
from sessions_app.models import ApiKey, Tenant

logger = logging.getLogger(__name__)

SESSION_TENANT_KEY = "tuft_dashboard_api_key_id"
M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class Viewer:
    """``tenant`` is None exactly for staff, who see every tenant."""

    name: str
    tenant: Tenant | None = None

    @property
    def is_staff(self) -> bool:
        return self.tenant is None

    def scope(self, queryset: QuerySet[M]) -> QuerySet[M]:
        """Only the rows this viewer may see (every model here has a ``tenant`` field)."""
        return queryset if self.tenant is None else queryset.filter(tenant=self.tenant)

    def may_see(self, tenant_id: int) -> bool:
        return self.tenant is None or self.tenant.pk == tenant_id


def _tenant_viewer(key_id: Any) -> Viewer | None:
    key = ApiKey.objects.select_related("tenant").filter(pk=key_id, revoked_at__isnull=True).first()
    if key is None or not key.tenant.is_active:
        return None
    return Viewer(name=key.tenant.name, tenant=key.tenant)


def viewer_for_request(request: HttpRequest) -> Viewer | None:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_active and user.is_staff:
        return Viewer(name=user.get_username())
    key_id = request.session.get(SESSION_TENANT_KEY)
    return _tenant_viewer(key_id) if key_id is not None else None


def viewer_for_session_key(session_key: str | None) -> Viewer | None:
    """The same answer for a WebSocket, from a fresh read of the session (sync: call via database_sync_to_async).

    Re-reading the store each time means a logout in another tab, a password
    change or a revoked key also ends an open socket at its next check.
    """
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)
    data = store.load()
    user_id = data.get(auth.SESSION_KEY)
    if user_id is not None:
        user = get_user_model().objects.filter(pk=user_id, is_active=True, is_staff=True).first()
        if user is not None and constant_time_compare(data.get(auth.HASH_SESSION_KEY, ""),
                                                      user.get_session_auth_hash()):
            return Viewer(name=user.get_username())
        return None
    key_id = data.get(SESSION_TENANT_KEY)
    return _tenant_viewer(key_id) if key_id is not None else None


def log_in_tenant(request: HttpRequest, raw_key: str) -> Viewer | None:
    """Log the browser in as the key's tenant; None if the key is not valid."""
    found = tenant_for_key(raw_key.strip())
    if found is None:
        return None
    tenant, key = found
    auth.logout(request)  # flushes the session (new session key): no fixation, no staff identity left over
    request.session[SESSION_TENANT_KEY] = key.pk
    rotate_token(request)
    logger.info("tenant %s logged into the dashboard with key %s", tenant.name, key.prefix)
    return Viewer(name=tenant.name, tenant=tenant)


def log_out(request: HttpRequest) -> None:
    auth.logout(request)
