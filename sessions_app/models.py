"""Tenants, their API keys and quotas, and client sessions."""

from __future__ import annotations

import hashlib
import secrets

from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

KEY_PREFIX = "tml-"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def new_raw_key() -> str:
    # The tinker SDK refuses keys that do not start with "tml-".
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Tenant(models.Model):
    """A team sharing the server. Everything a client creates belongs to one."""

    name = models.CharField(max_length=100, unique=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    # DRF treats the authenticated principal as "request.user".
    @property
    def is_authenticated(self) -> bool:
        return True


class ApiKey(models.Model):
    """An API key, stored only as its SHA-256 hash; the raw key is shown once."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    label = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, help_text="First characters of the key, to recognise it")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.tenant})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class ClientSession(models.Model):
    """One SDK ServiceClient session (``create_session``)."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        FINISHED = "finished"
        EXPIRED = "expired"

    id = models.CharField(primary_key=True, max_length=64)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="sessions")
    tags = models.JSONField(default=list, blank=True)
    user_metadata = models.JSONField(default=dict, blank=True)
    display_name = models.CharField(max_length=200, blank=True)
    sdk_version = models.CharField(max_length=40, blank=True)
    # X-Idempotency-Key of the create_session call, so HTTP-layer retries get this session back.
    idempotency_key = models.CharField(max_length=100, null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    finish_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"])]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "idempotency_key"], name="unique_session_idempotency_key")
        ]

    def __str__(self) -> str:
        return self.id


class QuotaLimits(models.Model):
    """The limits a quota sets; an empty field means unlimited."""

    max_training_runs = models.IntegerField(null=True, blank=True, help_text="Concurrent (unreleased) training runs")
    max_lora_rank = models.IntegerField(null=True, blank=True)
    max_sampling_sessions = models.IntegerField(null=True, blank=True)
    max_checkpoint_bytes = models.BigIntegerField(null=True, blank=True)
    train_tokens_per_day = models.BigIntegerField(null=True, blank=True)
    sample_tokens_per_day = models.BigIntegerField(null=True, blank=True)

    LIMIT_FIELDS = (
        "max_training_runs", "max_lora_rank", "max_sampling_sessions",
        "max_checkpoint_bytes", "train_tokens_per_day", "sample_tokens_per_day",
    )

    class Meta:
        abstract = True

    def limits(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in self.LIMIT_FIELDS}


class Quota(QuotaLimits):
    """A tenant's own limits. Tenants without a row follow ``DefaultQuota``."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="quota")
    # Admission limits of single requests (sessions_app.admission). Unlike the limits
    # above, empty means the server's default from settings, not unlimited.
    max_num_samples = models.IntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="num_samples of one sample request; empty: the server default (TUFT_MAX_NUM_SAMPLES)",
    )
    max_fwdbwd_tokens = models.IntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Tokens of one forward/forward_backward request; empty: the server default "
                  "(TUFT_MAX_FWDBWD_TOKENS)",
    )

    ADMISSION_FIELDS = ("max_num_samples", "max_fwdbwd_tokens")

    def __str__(self) -> str:
        return f"quota of {self.tenant}"


class DefaultQuota(QuotaLimits):
    """The limits of every tenant that has no ``Quota`` row of its own (one row, pk=1).

    Stored in the database so operators change it in the admin without a
    restart; a new tenant starts under it until it is given its own quota.
    """

    SINGLETON_PK = 1

    class Meta:
        verbose_name = "default quota"
        verbose_name_plural = "default quota"

    def __str__(self) -> str:
        return "default quota (tenants without their own)"

    def save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.pk = self.SINGLETON_PK  # there is only one default
        super().save(*args, **kwargs)

    @classmethod
    def load(cls) -> "DefaultQuota":
        """The stored default, or an unsaved all-unlimited one if none was set."""
        found = cls.objects.filter(pk=cls.SINGLETON_PK).first()
        return found if found is not None else cls(pk=cls.SINGLETON_PK)


class DailyUsage(models.Model):
    """What a tenant used on one (UTC) day, counted as work completes."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="usage")
    day = models.DateField()
    training_tokens = models.BigIntegerField(default=0, help_text="Tokens through forward_backward / forward")
    prefill_tokens = models.BigIntegerField(default=0, help_text="Prompt tokens of sampling requests")
    sampled_tokens = models.BigIntegerField(default=0, help_text="Tokens generated by sampling")
    operations = models.IntegerField(default=0)
    failed_operations = models.IntegerField(default=0)
    checkpoint_bytes = models.BigIntegerField(default=0, help_text="Checkpoint storage held (at its last change that day)")

    class Meta:
        ordering = ["-day", "tenant"]
        verbose_name_plural = "daily usage"
        constraints = [models.UniqueConstraint(fields=["tenant", "day"], name="unique_usage_per_day")]

    def __str__(self) -> str:
        return f"{self.tenant} {self.day}"
