"""Admin for operators: training runs, checkpoints and operations (read-mostly)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import format_html

from training_app.checkpoint_deletion import do_delete_checkpoints
from training_app.models import Checkpoint, Operation, TrainingRun


class CheckpointInline(admin.TabularInline):
    model = Checkpoint
    fields = ["tinker_path", "kind", "size", "public", "created_at", "expires_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="size")
    def size(self, obj: Checkpoint) -> str:
        return filesizeformat(obj.size_bytes)


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "tenant", "base_model", "lora_rank", "state", "next_seq_id", "created_at",
                    "last_request_at", "dashboard"]
    list_filter = ["released", "ready", "base_model", "lora_rank", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["id", "tenant__name", "session__id"]
    date_hierarchy = "created_at"
    readonly_fields = ["id", "tenant", "session", "model_seq_id", "base_model", "lora_rank", "lora_seed",
                       "train_mlp", "train_attn", "train_unembed", "user_metadata", "next_seq_id", "ready",
                       "released", "created_at", "last_request_at"]
    inlines = [CheckpointInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs are created by SDK clients

    # A run's checkpoints would go by cascade as bare rows: delete them (files included) first.
    def delete_model(self, request: HttpRequest, obj: TrainingRun) -> None:
        do_delete_checkpoints(list(obj.checkpoints.all()))
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[TrainingRun]) -> None:
        do_delete_checkpoints(list(Checkpoint.objects.filter(training_run__in=queryset)))
        super().delete_queryset(request, queryset)

    @admin.display(description="state")
    def state(self, obj: TrainingRun) -> str:
        return "released" if obj.released else ("ready" if obj.ready else "starting")

    @admin.display(description="loss curve")
    def dashboard(self, obj: TrainingRun) -> str:
        return format_html('<a href="{}">open</a>', reverse("dashboard:run", args=[obj.id]))


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["tinker_path", "tenant", "kind", "size", "public", "created_at", "expires_at"]
    list_filter = ["kind", "public", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["tinker_path", "tenant__name", "training_run__id"]
    date_hierarchy = "created_at"
    readonly_fields = ["tenant", "training_run", "kind", "name", "tinker_path", "storage_path", "size_bytes",
                       "user_metadata", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # checkpoints are written by save operations

    # Deleting here (one, or the bulk action) removes the files and frees the quota
    # too: the same domain action as the REST DELETE, never a bare row delete.
    def delete_model(self, request: HttpRequest, obj: Checkpoint) -> None:
        do_delete_checkpoints([obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Checkpoint]) -> None:
        do_delete_checkpoints(list(queryset))

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj: Checkpoint) -> str:
        return filesizeformat(obj.size_bytes)


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    """The futures: what each tenant asked for, in what order, and how it ended."""

    list_display = ["request_id", "tenant", "kind", "target", "seq_id", "status", "error_category", "num_tokens",
                    "duration", "created_at"]
    list_filter = ["status", "kind", "error_category", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["request_id", "training_run__id", "sampling_session__id", "error", "tenant__name"]
    date_hierarchy = "created_at"
    exclude = ["request_blob", "result_blob"]
    readonly_fields = ["request_id", "tenant", "kind", "training_run", "sampling_session", "seq_id", "status",
                       "request", "result", "error", "error_category", "metrics", "num_tokens", "created_at",
                       "started_at", "finished_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Operation]:
        # Never load the request/result blobs (up to megabytes each) for a list.
        return super().get_queryset(request).defer("request_blob", "result_blob", "request", "result")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="run / sampler")
    def target(self, obj: Operation) -> str:
        return obj.training_run_id or obj.sampling_session_id or ""

    @admin.display(description="duration")
    def duration(self, obj: Operation) -> str:
        if obj.started_at is None or obj.finished_at is None:
            return ""
        return f"{(obj.finished_at - obj.started_at).total_seconds():.2f} s"
