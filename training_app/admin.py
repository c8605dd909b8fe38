from django.contrib import admin

from training_app.models import Checkpoint, Operation, TrainingRun


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "tenant", "base_model", "lora_rank", "next_seq_id", "released", "created_at", "last_request_at"]
    list_filter = ["tenant", "base_model", "released"]
    search_fields = ["id", "tenant__name"]


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["tinker_path", "tenant", "kind", "size_bytes", "public", "created_at", "expires_at"]
    list_filter = ["tenant", "kind", "public"]
    search_fields = ["tinker_path", "tenant__name"]


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ["request_id", "tenant", "kind", "training_run", "seq_id", "status", "error_category", "created_at", "finished_at"]
    list_filter = ["status", "kind", "tenant"]
    search_fields = ["request_id", "training_run__id", "error"]
    exclude = ["request_blob", "result_blob"]
