"""Admin for operators: sampling sessions."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from sampling_app.models import SamplingSession


@admin.register(SamplingSession)
class SamplingSessionAdmin(admin.ModelAdmin):
    list_display = ["id", "tenant", "base_model", "model_path", "samples", "session_status", "created_at"]
    list_filter = ["base_model", "session__status", "tenant"]
    list_select_related = ["tenant", "session"]
    search_fields = ["id", "model_path", "tenant__name"]
    date_hierarchy = "created_at"
    readonly_fields = ["id", "tenant", "session", "sampling_session_seq_id", "base_model", "model_path",
                       "checkpoint", "created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[SamplingSession]:
        return super().get_queryset(request).annotate(n_samples=Count("operations"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # opened by SDK clients

    @admin.display(description="sample requests", ordering="n_samples")
    def samples(self, obj: Any) -> int:
        return int(obj.n_samples)

    @admin.display(description="session", ordering="session__status")
    def session_status(self, obj: SamplingSession) -> str:
        return obj.session.status
