"""Tinker REST management API: training runs, checkpoints, weights info, downloads.

Visibility: ``access_scope=owned`` (the SDK's default) shows the tenant's own
runs; ``accessible`` adds runs of other tenants that have a published, live
checkpoint (and of those, only the published checkpoints). Only the owner may
delete, publish, unpublish or re-time a checkpoint; anyone who can see a
checkpoint may load, sample or download it.

Expired checkpoints (TTL) disappear from every answer at once and are deleted,
files included, whenever this API is read (and by the periodic housekeeping
in ``tuft_project.startup``), so no listing ever shows a dead checkpoint.
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import FileResponse, HttpResponse
from django.utils import timezone
from django.utils.http import http_date
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from sessions_app.api import TenantAPIView
from sessions_app.models import Tenant
from sessions_app.views import _page
from training_app import actions, exports
from training_app.checkpoint_deletion import do_delete_checkpoints
from training_app.checkpoint_paths import absolute
from training_app.models import Checkpoint, TrainingRun
from training_app.recovery import do_delete_expired_checkpoints
from training_app.views import check_ttl
from tuft_project.exceptions import BadRequest, NotFound

logger = logging.getLogger(__name__)

CHECKPOINT_TYPES = {
    Checkpoint.Kind.TRAINING: "training",
    Checkpoint.Kind.SAMPLER: "sampler",
    Checkpoint.Kind.EXTERNAL: "external",
}


def checkpoint_json(c: Checkpoint) -> dict[str, Any]:
    return {
        "checkpoint_id": c.checkpoint_id,
        "checkpoint_type": CHECKPOINT_TYPES.get(c.kind, "training"),
        "time": c.created_at.isoformat(),
        "tinker_path": c.tinker_path,
        "size_bytes": c.size_bytes,
        "public": c.public,
        "user_metadata": {k: str(v) for k, v in (c.user_metadata or {}).items()},
        "expires_at": c.expires_at.isoformat() if c.expires_at else None,
    }


def live_checkpoints() -> QuerySet[Checkpoint]:
    """Checkpoints that have not expired (whether or not housekeeping has deleted them yet)."""
    return Checkpoint.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))


class ManagementView(TenantAPIView):
    """Base of the checkpoint-reading endpoints: expired checkpoints are purged first.

    Their files go at the moment anyone looks, not only at the next
    housekeeping round, so a TTL is exact as far as clients can observe.
    """

    def initial(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().initial(request, *args, **kwargs)
        do_delete_expired_checkpoints()


def run_json(run: TrainingRun, tenant: Tenant) -> dict[str, Any]:
    ckpts = visible_checkpoints(run, tenant)
    last = ckpts.filter(kind=Checkpoint.Kind.TRAINING).order_by("-created_at").first()
    last_sampler = ckpts.filter(kind=Checkpoint.Kind.SAMPLER).order_by("-created_at").first()
    return {
        "training_run_id": run.id,
        "base_model": run.base_model,
        "model_owner": run.tenant.name,
        "is_lora": True,
        "corrupted": False,
        "lora_rank": run.lora_rank,
        "last_request_time": run.last_request_at.isoformat(),
        "last_checkpoint": checkpoint_json(last) if last else None,
        "last_sampler_checkpoint": checkpoint_json(last_sampler) if last_sampler else None,
        "user_metadata": {k: str(v) for k, v in (run.user_metadata or {}).items()},
    }


def _scope(request: Any) -> str:
    scope = request.query_params.get("access_scope", "owned")
    if scope not in ("owned", "accessible"):
        raise BadRequest(f"access_scope must be 'owned' or 'accessible', got {scope!r}")
    return scope


def visible_runs(tenant: Tenant, scope: str) -> QuerySet[TrainingRun]:
    runs = TrainingRun.objects.select_related("tenant")
    if scope == "owned":
        return runs.filter(tenant=tenant)
    published = live_checkpoints().filter(training_run=OuterRef("pk"), public=True)
    return runs.filter(Q(tenant=tenant) | Exists(published))


def access_visible_run(tenant: Tenant, run_id: str, scope: str = "accessible") -> TrainingRun:
    run = visible_runs(tenant, scope).filter(id=run_id).first()
    if run is None:
        raise NotFound(f"training run {run_id!r} not found")
    return run


def visible_checkpoints(run: TrainingRun, tenant: Tenant) -> QuerySet[Checkpoint]:
    ckpts = live_checkpoints().filter(training_run=run)
    return ckpts if run.tenant_id == tenant.pk else ckpts.filter(public=True)


def _parse_checkpoint_id(checkpoint_id: str) -> tuple[str, str]:
    kind, _, name = checkpoint_id.partition("/")
    if kind not in CHECKPOINT_TYPES or not name:
        raise BadRequest(
            f"invalid checkpoint id {checkpoint_id!r}: expected weights/<name>, sampler_weights/<name> "
            "or external_weights/<name>"
        )
    return kind, name


def access_own_checkpoint(tenant: Tenant, run_id: str, checkpoint_id: str) -> Checkpoint:
    """A checkpoint the tenant may change (its own); another tenant's is a 404."""
    kind, name = _parse_checkpoint_id(checkpoint_id)
    run = actions.access_run(tenant, run_id)
    ckpt = live_checkpoints().filter(training_run=run, kind=kind, name=name).first()
    if ckpt is None:
        raise NotFound(f"checkpoint {checkpoint_id!r} not found")
    return ckpt


def access_visible_checkpoint(tenant: Tenant, run_id: str, checkpoint_id: str) -> Checkpoint:
    """A checkpoint the tenant may read: its own, or a published one."""
    kind, name = _parse_checkpoint_id(checkpoint_id)
    run = access_visible_run(tenant, run_id)
    ckpt = visible_checkpoints(run, tenant).filter(kind=kind, name=name).first()
    if ckpt is None:
        raise NotFound(f"checkpoint {checkpoint_id!r} not found")
    return ckpt


class TrainingRunListView(ManagementView):
    def get(self, request):  # type: ignore[no-untyped-def]
        limit, offset = _page(request)
        qs = visible_runs(self.tenant, _scope(request)).order_by("-created_at", "-pk")
        runs = [run_json(r, self.tenant) for r in qs[offset : offset + limit]]
        return Response({"training_runs": runs, "cursor": {"offset": offset, "limit": limit, "total_count": qs.count()}})


class TrainingRunDetailView(ManagementView):
    def get(self, request, run_id: str):  # type: ignore[no-untyped-def]
        run = visible_runs(self.tenant, _scope(request)).filter(id=run_id).first()
        if run is None:
            raise NotFound(f"training run {run_id!r} not found")
        return Response(run_json(run, self.tenant))


class RunCheckpointListView(ManagementView):
    def get(self, request, run_id: str):  # type: ignore[no-untyped-def]
        run = access_visible_run(self.tenant, run_id)
        qs = visible_checkpoints(run, self.tenant).order_by("-created_at", "-pk")
        ckpts = [checkpoint_json(c) for c in qs]
        return Response({"checkpoints": ckpts, "cursor": {"offset": 0, "limit": len(ckpts), "total_count": len(ckpts)}})


class UserCheckpointListView(ManagementView):
    def get(self, request):  # type: ignore[no-untyped-def]
        limit, offset = _page(request)
        qs = live_checkpoints().filter(tenant=self.tenant).order_by("-created_at", "-pk")
        ckpts = [checkpoint_json(c) for c in qs[offset : offset + limit]]
        return Response({"checkpoints": ckpts, "cursor": {"offset": offset, "limit": limit, "total_count": qs.count()}})


class CheckpointDetailView(ManagementView):
    def get(self, request, run_id: str, checkpoint_id: str):  # type: ignore[no-untyped-def]
        return Response(checkpoint_json(access_visible_checkpoint(self.tenant, run_id, checkpoint_id)))

    def delete(self, request, run_id: str, checkpoint_id: str):  # type: ignore[no-untyped-def]
        ckpt = access_own_checkpoint(self.tenant, run_id, checkpoint_id)
        if ckpt.public:
            # Other tenants may be sampling or training from it.
            raise BadRequest("a published checkpoint cannot be deleted; unpublish it first")
        do_delete_checkpoints([ckpt])
        return Response(status=204)


class CheckpointPublishView(ManagementView):
    def post(self, request, run_id: str, checkpoint_id: str):  # type: ignore[no-untyped-def]
        ckpt = access_own_checkpoint(self.tenant, run_id, checkpoint_id)
        Checkpoint.objects.filter(pk=ckpt.pk).update(public=True)
        return Response(status=204)

    def delete(self, request, run_id: str, checkpoint_id: str):  # type: ignore[no-untyped-def]
        ckpt = access_own_checkpoint(self.tenant, run_id, checkpoint_id)
        Checkpoint.objects.filter(pk=ckpt.pk).update(public=False)
        return Response(status=204)


class CheckpointTTLView(ManagementView):
    def put(self, request, run_id: str, checkpoint_id: str):  # type: ignore[no-untyped-def]
        ckpt = access_own_checkpoint(self.tenant, run_id, checkpoint_id)
        if not isinstance(request.data, dict) or "ttl_seconds" not in request.data:
            raise BadRequest("body must be {\"ttl_seconds\": <int seconds> | null}")
        ttl = request.data["ttl_seconds"]
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int)):
            raise BadRequest("ttl_seconds must be an integer number of seconds or null")
        check_ttl(ttl)
        expires = timezone.now() + timezone.timedelta(seconds=ttl) if ttl is not None else None
        Checkpoint.objects.filter(pk=ckpt.pk).update(expires_at=expires)
        return Response(status=204)


class WeightsInfoView(ManagementView):
    def post(self, request):  # type: ignore[no-untyped-def]
        path = request.data.get("tinker_path") if isinstance(request.data, dict) else None
        if not isinstance(path, str):
            raise BadRequest("weights_info needs tinker_path")
        ckpt = actions.access_readable_checkpoint(self.tenant, path)
        run = ckpt.training_run
        return Response({
            "base_model": run.base_model, "is_lora": True, "lora_rank": run.lora_rank,
            "optimizer_config": {"type": "adamw"}, "train_unembed": run.train_unembed,
            "train_mlp": run.train_mlp, "train_attn": run.train_attn,
        })


# -- downloads -------------------------------------------------------------------


class ExternalWeightsUrlsView(ManagementView):
    """GET .../checkpoints/{id}/external_weights_urls → {"urls": {file: url}, "expires"} (SDK 0.38)."""

    def get(self, request, run_id: str, checkpoint_id: str):  # type: ignore[no-untyped-def]
        ckpt = access_visible_checkpoint(self.tenant, run_id, checkpoint_id)
        expires = exports.download_expiry()
        urls = {
            relpath: request.build_absolute_uri(
                f"/api/v1/downloads/{exports.sign_download(ckpt, relpath, self.tenant)}")
            for relpath in exports.checkpoint_files(ckpt)
        }
        return Response({"urls": urls, "expires": expires.isoformat()})


class BinaryAcceptingView(ManagementView):
    """Answers whatever the client Accepts (e.g. application/gzip); errors stay JSON."""

    def perform_content_negotiation(self, request, force=False):  # type: ignore[no-untyped-def]
        return super().perform_content_negotiation(request, force=True)


class CheckpointArchiveView(BinaryAcceptingView):
    """GET .../checkpoints/{id}/archive → 302 to a signed, expiring URL of a .tar.gz.

    The shape earlier SDKs' ``RestClient.get_checkpoint_archive_url`` expects
    (it sends ``Accept: application/gzip`` and does not follow redirects): the
    URL in ``Location``, its expiry in ``Expires``.
    """

    def get(self, request, run_id: str, checkpoint_id: str):  # type: ignore[no-untyped-def]
        ckpt = access_visible_checkpoint(self.tenant, run_id, checkpoint_id)
        token = exports.sign_download(ckpt, exports.ARCHIVE, self.tenant)
        url = request.build_absolute_uri(f"/api/v1/downloads/{token}")
        response = HttpResponse(status=302)
        response["Location"] = url
        response["Expires"] = http_date(exports.download_expiry().timestamp())
        return response


class DownloadView(TenantAPIView):
    """GET /api/v1/downloads/{token}: the signed URL itself is the credential (no API key)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    def perform_content_negotiation(self, request, force=False):  # type: ignore[no-untyped-def]
        return super().perform_content_negotiation(request, force=True)

    def get(self, request, token: str):  # type: ignore[no-untyped-def]
        grant = exports.check_download_token(token)
        ckpt, path = exports.access_download(grant)
        if path is None:
            return _archive_response(ckpt)
        return FileResponse(open(path, "rb"), as_attachment=True, filename=path.name,
                            content_type="application/octet-stream")


def _archive_response(ckpt: Checkpoint) -> FileResponse:
    """The whole checkpoint directory as ``<name>.tar.gz``.

    Built in an anonymous temporary file (an adapter of a large model is
    hundreds of MB), which FileResponse streams and then closes, deleting it.
    """
    spool = tempfile.TemporaryFile()
    with tarfile.open(fileobj=spool, mode="w:gz") as tar:
        root = absolute(ckpt.storage_path)
        for relpath in exports.checkpoint_files(ckpt):
            tar.add(str(root / relpath), arcname=relpath)
    spool.seek(0)
    return FileResponse(spool, as_attachment=True, filename=f"{ckpt.name}.tar.gz", content_type="application/gzip")
