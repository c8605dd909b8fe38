"""Sampling sessions: a base model, optionally with a sampler checkpoint applied."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from sessions_app.models import ClientSession, Tenant


class SamplingSession(models.Model):
    """Id ``{session_id}:sample:{sampling_session_seq_id}``."""

    id = models.CharField(primary_key=True, max_length=100)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="sampling_sessions")
    session = models.ForeignKey(ClientSession, on_delete=models.CASCADE, related_name="sampling_sessions")
    sampling_session_seq_id = models.IntegerField()
    base_model = models.CharField(max_length=200)
    model_path = models.CharField(max_length=400, blank=True)  # tinker:// path, "" = base model
    checkpoint = models.ForeignKey(
        "training_app.Checkpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="sampling_sessions"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["session", "sampling_session_seq_id"], name="unique_sampler_per_session_seq")
        ]

    def __str__(self) -> str:
        return self.id
