from django.contrib import admin

from sampling_app.models import SamplingSession


@admin.register(SamplingSession)
class SamplingSessionAdmin(admin.ModelAdmin):
    list_display = ["id", "tenant", "base_model", "model_path", "created_at"]
    list_filter = ["tenant", "base_model"]
    search_fields = ["id", "model_path", "tenant__name"]
