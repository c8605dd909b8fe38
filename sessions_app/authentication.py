"""Resolve the tenant from the ``X-API-Key`` header (the only credential the SDK sends)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from monitoring_app.log_context import bind_tenant
from sessions_app.models import ApiKey, Tenant, hash_key

HEADER = "HTTP_X_API_KEY"


def tenant_for_key(raw_key: str | None) -> tuple[Tenant, ApiKey] | None:
    if not raw_key:
        return None
    key = ApiKey.objects.select_related("tenant").filter(key_hash=hash_key(raw_key)).first()
    if key is None or not key.is_active or not key.tenant.is_active:
        return None
    now = timezone.now()
    # Bound the write rate: record use at most once a minute per key.
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    bind_tenant(key.tenant.name)  # the rest of this request's log lines name the tenant
    return key.tenant, key


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Any) -> tuple[Tenant, ApiKey] | None:
        raw = request.META.get(HEADER)
        if raw is None:
            return None  # -> NotAuthenticated (401) from the permission check
        found = tenant_for_key(raw)
        if found is None:
            raise AuthenticationFailed("invalid or revoked API key")
        return found

    def authenticate_header(self, request: Any) -> str:
        # Makes DRF answer 401 (not 403) when the key is missing or wrong.
        return 'ApiKey header="X-API-Key"'
