"""Admin for operators: training runs, checkpoints and operations (read-mostly)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from training_app.actions import do_cancel_queued_operations, do_stop_run
from training_app.checkpoint_deletion import do_delete_checkpoints
from training_app.models import Checkpoint, Operation, TrainingRun
from tuft_project.admin_confirm import confirmation_page, is_confirmed


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
    """Read-only but for "stop": the lease and sequencing fields belong to the workers."""

    list_display = ["name", "id", "tenant", "base_model", "lora_rank", "state", "next_seq_id", "created_at",
                    "last_request_at", "dashboard"]
    list_filter = ["released", "ready", "base_model", "lora_rank", "tenant"]
    list_select_related = ["tenant", "session"]
    search_fields = ["id", "tenant__name", "session__id"]
    date_hierarchy = "created_at"
    readonly_fields = ["name", "id", "tenant", "session", "model_seq_id", "base_model", "lora_rank", "lora_seed",
                       "train_mlp", "train_attn", "train_unembed", "user_metadata", "next_seq_id", "ready",
                       "released", "created_at", "last_request_at", "state_seq", "lease_owner", "lease_expires_at"]
    inlines = [CheckpointInline]
    actions = ["stop"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs are created by SDK clients

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a run row would orphan its checkpoint files and its futures'
        # history: stop it instead (its session's end cleans up the rest).
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[TrainingRun]:
        return super().get_queryset(request).select_related("session")

    @admin.display(description="name")
    def name(self, obj: TrainingRun) -> str:
        return obj.display_name

    @admin.display(description="state")
    def state(self, obj: TrainingRun) -> str:
        return "released" if obj.released else ("ready" if obj.ready else "starting")

    @admin.display(description="loss curve")
    def dashboard(self, obj: TrainingRun) -> str:
        return format_html('<a href="{}">open</a>', reverse("dashboard:run", args=[obj.id]))

    @admin.action(description="Stop selected runs (frees their adapters, cancels queued operations)",
                  permissions=["view"])
    def stop(self, request: HttpRequest, queryset: QuerySet[TrainingRun]) -> TemplateResponse | None:
        live = queryset.filter(released=False)
        if not live.exists():
            self.message_user(request, "Those runs are already stopped or released.", messages.WARNING)
            return None
        if not is_confirmed(request):
            return confirmation_page(self, request, live, action="stop", title="Stop training runs?", consequences=[
                "Each run is released now: its adapter is freed and it no longer counts against its tenant's quota.",
                "Its queued operations fail; an operation already running finishes.",
                "The SDK's next call on the run is refused (404: stopped by an operator). Checkpoints stay.",
            ], button="Yes, stop them")
        runs = list(live)
        cancelled = sum(do_stop_run(run, f"admin {request.user}") for run in runs)
        self.message_user(request, f"Stopped {len(runs)} run(s); cancelled {cancelled} queued operation(s).",
                          messages.SUCCESS)
        return None


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

    actions = ["cancel"]

    @admin.action(description="Cancel selected queued operations (their futures fail)", permissions=["view"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Operation]) -> TemplateResponse | None:
        queued = queryset.filter(status=Operation.Status.PENDING)
        if not queued.exists():
            self.message_user(request, "None of those operations is still queued.", messages.WARNING)
            return None
        if not is_confirmed(request):
            return confirmation_page(self, request, queued, action="cancel", title="Cancel queued operations?",
                                     consequences=[
                                         "Each future fails with 'cancelled by an operator'; the SDK raises it.",
                                         "Later operations of the same run still run, in order.",
                                     ], button="Yes, cancel them")
        n = do_cancel_queued_operations(list(queued.values_list("request_id", flat=True)), f"admin {request.user}")
        self.message_user(request, f"Cancelled {n} queued operation(s).", messages.SUCCESS)
        return None

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
