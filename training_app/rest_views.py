"""Tinker REST management API: training runs, checkpoints, weights info."""

from __future__ import annotations

import shutil
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework.response import Response

from sessions_app.api import TenantAPIView
from sessions_app.views import _page
from training_app import actions
from training_app.checkpoint_paths import absolute
from training_app.models import Checkpoint, TrainingRun
from tuft_project.exceptions import BadRequest, NotFound


def checkpoint_json(c: Checkpoint) -> dict[str, Any]:
    return {
        "checkpoint_id": c.checkpoint_id,
        "checkpoint_type": "training" if c.kind == Checkpoint.Kind.TRAINING else "sampler",
        "time": c.created_at.isoformat(),
        "tinker_path": c.tinker_path,
        "size_bytes": c.size_bytes,
        "public": c.public,
        "user_metadata": {k: str(v) for k, v in (c.user_metadata or {}).items()},
        "expires_at": c.expires_at.isoformat() if c.expires_at else None,
    }


def live_checkpoints() -> Any:
    return Checkpoint.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))


def run_json(run: TrainingRun) -> dict[str, Any]:
    ckpts = live_checkpoints().filter(training_run=run)
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


class TrainingRunListView(TenantAPIView):
    def get(self, request):  # type: ignore[no-untyped-def]
        limit, offset = _page(request)
        qs = TrainingRun.objects.filter(tenant=self.tenant).select_related("tenant").order_by("-created_at")
        runs = [run_json(r) for r in qs[offset : offset + limit]]
        return Response({"training_runs": runs, "cursor": {"offset": offset, "limit": limit, "total_count": qs.count()}})


class TrainingRunDetailView(TenantAPIView):
    def get(self, request, run_id: str):  # type: ignore[no-untyped-def]
        return Response(run_json(actions.access_run(self.tenant, run_id)))


class RunCheckpointListView(TenantAPIView):
    def get(self, request, run_id: str):  # type: ignore[no-untyped-def]
        run = actions.access_run(self.tenant, run_id)
        ckpts = [checkpoint_json(c) for c in live_checkpoints().filter(training_run=run).order_by("-created_at")]
        return Response({"checkpoints": ckpts})


class UserCheckpointListView(TenantAPIView):
    def get(self, request):  # type: ignore[no-untyped-def]
        limit, offset = _page(request)
        qs = live_checkpoints().filter(tenant=self.tenant).order_by("-created_at")
        ckpts = [checkpoint_json(c) for c in qs[offset : offset + limit]]
        return Response({"checkpoints": ckpts, "cursor": {"offset": offset, "limit": limit, "total_count": qs.count()}})


def access_own_checkpoint(tenant: Any, run_id: str, checkpoint_id: str) -> Checkpoint:
    kind, _, name = checkpoint_id.partition("/")
    if kind not in (Checkpoint.Kind.TRAINING, Checkpoint.Kind.SAMPLER) or not name:
        raise BadRequest(f"invalid checkpoint id {checkpoint_id!r}: expected weights/<name> or sampler_weights/<name>")
    run = actions.access_run(tenant, run_id)
    ckpt = live_checkpoints().filter(training_run=run, kind=kind, name=name).first()
    if ckpt is None:
        raise NotFound(f"checkpoint {checkpoint_id!r} not found")
    return ckpt


class CheckpointDetailView(TenantAPIView):
    def delete(self, request, run_id: str, checkpoint_id: str):  # type: ignore[no-untyped-def]
        ckpt = access_own_checkpoint(self.tenant, run_id, checkpoint_id)
        if ckpt.public:
            raise BadRequest("a published checkpoint cannot be deleted; unpublish it first")
        do_delete_checkpoint(ckpt)
        return Response(status=204)


def do_delete_checkpoint(ckpt: Checkpoint) -> None:
    directory = absolute(ckpt.storage_path)
    with transaction.atomic():
        ckpt.delete()
    shutil.rmtree(directory, ignore_errors=True)


class CheckpointPublishView(TenantAPIView):
    def post(self, request, run_id: str, checkpoint_id: str):  # type: ignore[no-untyped-def]
        ckpt = access_own_checkpoint(self.tenant, run_id, checkpoint_id)
        Checkpoint.objects.filter(pk=ckpt.pk).update(public=True)
        return Response(status=204)

    def delete(self, request, run_id: str, checkpoint_id: str):  # type: ignore[no-untyped-def]
        ckpt = access_own_checkpoint(self.tenant, run_id, checkpoint_id)
        Checkpoint.objects.filter(pk=ckpt.pk).update(public=False)
        return Response(status=204)


class CheckpointTTLView(TenantAPIView):
    def put(self, request, run_id: str, checkpoint_id: str):  # type: ignore[no-untyped-def]
        ckpt = access_own_checkpoint(self.tenant, run_id, checkpoint_id)
        ttl = request.data.get("ttl_seconds") if isinstance(request.data, dict) else None
        if ttl is not None and (not isinstance(ttl, int) or ttl < 0):
            raise BadRequest("ttl_seconds must be a non-negative integer or null")
        expires = timezone.now() + timezone.timedelta(seconds=ttl) if ttl is not None else None
        Checkpoint.objects.filter(pk=ckpt.pk).update(expires_at=expires)
        return Response(status=204)


class WeightsInfoView(TenantAPIView):
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
