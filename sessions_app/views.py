"""Client bootstrap, sessions, heartbeats, telemetry and capabilities."""

from __future__ import annotations

import logging

from django.conf import settings
from rest_framework.response import Response
from tinker import types as T

from sessions_app import actions
from sessions_app.api import TenantAPIView
from sessions_app.models import ClientSession
from tuft_project.exceptions import BadRequest
from tuft_project.input_checks import MAX_DB_INT, check_metadata, check_text
from tuft_project.runtime import get_config

logger = logging.getLogger(__name__)

# Server feature flags sent to every SDK client (tinker-protocol.md §2.1).
# Chunk limits are deliberate: 256 data or ~4 MB per forward_backward request
# keeps one request's work bounded (a few seconds on CPU for small models)
# while the SDK sends all chunks concurrently and reassembles them in order.
CLIENT_CONFIG = {
    "pjwt_auth_enabled": False,
    "parallel_fwdbwd_chunks": True,
    "proto_compress_fwdbwd": False,
    "fwdbwd_max_chunk_len": 256,
    "fwdbwd_max_chunk_bytes_count": 4_000_000,
    "sample_use_retrieve_futures": False,
    "custom_loss_server_side": False,
    "sample_join_sampling_session": False,
}


class ClientConfigView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        # Half the body limit: the SDK's byte count is an estimate of the protobuf size.
        chunk_bytes = min(CLIENT_CONFIG["fwdbwd_max_chunk_bytes_count"], settings.TUFT_MAX_BODY_BYTES // 2)
        return Response({**CLIENT_CONFIG, "fwdbwd_max_chunk_len": settings.TUFT_FWDBWD_MAX_CHUNK_LEN,
                         "fwdbwd_max_chunk_bytes_count": chunk_bytes})


class DynamicConfigView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        return Response({"refresh_interval_sec": 300, "sample_cancel_enabled": False})


class CapabilitiesView(TenantAPIView):
    def get(self, request):  # type: ignore[no-untyped-def]
        models = [
            {"model_name": m.model_name, "max_context_length": m.max_model_len, "trainable": True, "sampleable": True}
            for m in get_config().models
        ]
        return Response({"supported_models": models})


class CreateSessionView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        body = self.parse(T.CreateSessionRequest)
        idempotency_key = request.headers.get("X-Idempotency-Key")
        # Within their ClientSession columns (PostgreSQL enforces the lengths, SQLite does not).
        for name, column, value in (("display_name", "display_name", body.display_name),
                                    ("sdk_version", "sdk_version", body.sdk_version),
                                    ("X-Idempotency-Key", "idempotency_key", idempotency_key)):
            check_text(name, value, ClientSession._meta.get_field(column).max_length)
        check_metadata("user_metadata", body.user_metadata)
        session = actions.do_create_session(self.tenant, body, idempotency_key)
        return Response({"session_id": session.id, "type": "create_session"})


class HeartbeatView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        body = self.parse(T.SessionHeartbeatRequest)
        session = actions.access_active_session(self.tenant, body.session_id)
        actions.do_heartbeat(session)
        return Response({"type": "session_heartbeat"})


class FinishSessionView(TenantAPIView):
    def post(self, request, session_id: str):  # type: ignore[no-untyped-def]
        session = actions.access_session(self.tenant, session_id)
        reason = request.data.get("reason") if isinstance(request.data, dict) else None
        detail = request.data.get("detail") if isinstance(request.data, dict) else None
        kind = reason.get("type", "success") if isinstance(reason, dict) else "success"
        actions.do_finish_session(session, ClientSession.Status.FINISHED, f"{kind}: {detail or ''}".strip(": "))
        return Response({"status": "finished"})


class TelemetryView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        # Accepted and dropped: the SDK's client-side telemetry is not ours to keep.
        return Response({"status": "accepted"})


class SessionListView(TenantAPIView):
    def get(self, request):  # type: ignore[no-untyped-def]
        limit, offset = _page(request)
        _check_scope(request)
        qs = ClientSession.objects.filter(tenant=self.tenant).order_by("-created_at")
        ids = list(qs.values_list("id", flat=True)[offset : offset + limit])
        return Response({"sessions": ids})


class SessionDetailView(TenantAPIView):
    def get(self, request, session_id: str):  # type: ignore[no-untyped-def]
        _check_scope(request)
        session = actions.access_session(self.tenant, session_id)
        return Response({
            "training_run_ids": list(session.training_runs.order_by("model_seq_id").values_list("id", flat=True)),
            "sampler_ids": list(session.sampling_sessions.order_by("sampling_session_seq_id").values_list("id", flat=True)),
            "user_metadata": {k: str(v) for k, v in session.user_metadata.items()},
            "display_name": session.display_name or None,
        })


def _check_scope(request) -> None:  # type: ignore[no-untyped-def]
    """Sessions are never shared, so "accessible" and "owned" both mean the tenant's own."""
    scope = request.query_params.get("access_scope", "owned")
    if scope not in ("owned", "accessible"):
        raise BadRequest(f"access_scope must be 'owned' or 'accessible', got {scope!r}")


def _page(request) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    try:
        limit = int(request.query_params.get("limit", 20))
        offset = int(request.query_params.get("offset", 0))
    except ValueError:
        raise BadRequest("limit and offset must be integers") from None
    # The offset goes into SQL as an integer: beyond int64 the database driver fails.
    if not 1 <= limit <= 1000 or not 0 <= offset <= MAX_DB_INT:
        raise BadRequest(f"limit must be in 1..1000 and offset in 0..{MAX_DB_INT}")
    return limit, offset
