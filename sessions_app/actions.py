"""State changes of tenants, keys and client sessions (Zulip verbs: do_/check_/access_)."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from django.db import transaction
from django.utils import timezone

from sessions_app.models import ApiKey, ClientSession, Tenant, hash_key, new_raw_key
from training_app.actions import do_release_runs_of_session
from tuft_project.exceptions import Gone, NotFound

logger = logging.getLogger(__name__)


def do_create_tenant(name: str) -> Tenant:
    tenant = Tenant.objects.create(name=name)
    logger.info("created tenant %s", name)
    return tenant


def do_create_api_key(tenant: Tenant, label: str = "") -> tuple[ApiKey, str]:
    """Create a key and return it with the raw key, which is never stored."""
    raw = new_raw_key()
    key = ApiKey.objects.create(tenant=tenant, label=label, prefix=raw[:12], key_hash=hash_key(raw))
    return key, raw


def do_revoke_api_key(key: ApiKey) -> None:
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def do_create_session(tenant: Tenant, body: Any, idempotency_key: str | None) -> ClientSession:
    """Create a session; an HTTP-layer retry (same idempotency key) gets the same one."""
    with transaction.atomic():
        if idempotency_key:
            existing = ClientSession.objects.filter(tenant=tenant, idempotency_key=idempotency_key).first()
            if existing is not None:
                return existing
        return ClientSession.objects.create(
            id="sess-" + secrets.token_hex(8),
            tenant=tenant,
            tags=list(body.tags or []),
            user_metadata=dict(body.user_metadata or {}),
            display_name=body.display_name or "",
            sdk_version=body.sdk_version or "",
            idempotency_key=idempotency_key or None,
        )


def access_session(tenant: Tenant, session_id: str) -> ClientSession:
    """The tenant's session, or 404 (also for another tenant's session)."""
    session = ClientSession.objects.filter(tenant=tenant, id=session_id).first()
    if session is None:
        raise NotFound(f"session {session_id!r} not found")
    return session


def access_active_session(tenant: Tenant, session_id: str) -> ClientSession:
    session = access_session(tenant, session_id)
    if session.status != ClientSession.Status.ACTIVE:
        raise Gone(f"session {session_id!r} is {session.status}")
    return session


def do_heartbeat(session: ClientSession) -> None:
    ClientSession.objects.filter(pk=session.pk).update(last_heartbeat_at=timezone.now())


def do_finish_session(session: ClientSession, status: str, reason: str) -> None:
    """Close a session and release the in-memory adapters of its training runs."""
    with transaction.atomic():
        updated = ClientSession.objects.filter(pk=session.pk, status=ClientSession.Status.ACTIVE).update(
            status=status, finish_reason=reason[:200], finished_at=timezone.now()
        )
        if updated:
            do_release_runs_of_session(session)
    if updated:
        logger.info("session %s of tenant %s %s (%s)", session.id, session.tenant_id, status, reason)


def do_expire_silent_sessions(timeout_s: float) -> int:
    """Close every session with no heartbeat for ``timeout_s`` seconds."""
    cutoff = timezone.now() - timezone.timedelta(seconds=timeout_s)
    stale = list(ClientSession.objects.filter(status=ClientSession.Status.ACTIVE, last_heartbeat_at__lt=cutoff))
    for session in stale:
        do_finish_session(session, ClientSession.Status.EXPIRED, "no heartbeat")
    return len(stale)
