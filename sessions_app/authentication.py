"""Resolve the tenant from the ``X-API-Key`` header (the only credential the SDK sends)."""

from __future__ import annotations

import datetime
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from monitoring_app.log_context import bind_tenant
from sessions_app.models import ApiKey, Tenant, hash_key

logger = logging.getLogger(__name__)

HEADER = "HTTP_X_API_KEY"
# How often a key's last_used_at is written (at most once this many seconds per key).
LAST_USED_EVERY_S = 60


def tenant_for_key(raw_key: str | None) -> tuple[Tenant, ApiKey] | None:
    if not raw_key:
        return None
    key = ApiKey.objects.select_related("tenant").filter(key_hash=hash_key(raw_key)).first()
    if key is None or not key.is_active or not key.tenant.is_active:
        return None
    now = timezone.now()
    # Bound the write rate: record use at most once a minute per key.
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > LAST_USED_EVERY_S:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    bind_tenant(key.tenant.name)  # the rest of this request's log lines name the tenant
    return key.tenant, key


class NoQuickAnswer(Exception):
    """``tenant_id_for_key_now`` cannot answer here; use ``tenant_for_key`` on a thread."""


class _QuickReader(threading.local):
    connection: sqlite3.Connection | None = None
    path: str = ""


_quick = _QuickReader()


def tenant_id_for_key_now(raw_key: str | None) -> int | None:
    """The id of the key's tenant (None: no such key, revoked, or tenant inactive), read at once.

    For the event loop (``training_app.future_views``): the same check as
    ``tenant_for_key``, against the database as it is now (a revoked key is
    refused on its next request), but as one indexed read on a plain SQLite
    connection of the calling thread's own, without waiting for a thread hop.
    Raises ``NoQuickAnswer`` where that would not be exact or not quick: another
    database than a SQLite file (a PostgreSQL round trip must not block the
    loop), any SQLite error (e.g. busy for more than a few milliseconds), or a
    key whose ``last_used_at`` is due to be written (``tenant_for_key`` writes it).
    """
    if not raw_key:
        return None
    db = settings.DATABASES["default"]
    path = str(db["NAME"])
    if db["ENGINE"] != "django.db.backends.sqlite3" or path.startswith("file:") or not Path(path).is_file():
        raise NoQuickAnswer  # PostgreSQL, or an in-memory test database
    key_table, tenant_table = ApiKey._meta.db_table, Tenant._meta.db_table
    query = (f'SELECT t."id", t."name", k."last_used_at" FROM "{key_table}" k JOIN "{tenant_table}" t '
             f'ON t."id" = k."tenant_id" WHERE k."key_hash" = ? AND k."revoked_at" IS NULL AND t."is_active"')
    try:
        if _quick.connection is None or _quick.path != path:
            # A reader only (query_only); autocommit, so each query sees the latest commit.
            _quick.connection = sqlite3.connect(path, timeout=0.005, isolation_level=None, check_same_thread=True)
            _quick.connection.execute("PRAGMA query_only = 1")
            _quick.path = path
        # fetchall: the statement runs to its end, so no read snapshot stays open
        # (one would hold back the WAL checkpoints of the server's writers).
        rows = _quick.connection.execute(query, (hash_key(raw_key),)).fetchall()
    except sqlite3.Error as exc:
        logger.debug("quick key check unavailable (%s); using a reader thread", exc)
        raise NoQuickAnswer from exc
    if not rows:  # key_hash is unique: at most one row
        return None
    tenant_id, tenant_name, last_used = rows[0]
    # Django's SQLite backend stores aware datetimes as naive UTC text.
    now = timezone.now().replace(tzinfo=None)
    if last_used is None or (now - datetime.datetime.fromisoformat(last_used)).total_seconds() > LAST_USED_EVERY_S:
        raise NoQuickAnswer
    bind_tenant(tenant_name)
    return int(tenant_id)


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
