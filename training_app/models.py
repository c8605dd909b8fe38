"""Training runs, checkpoints, and operations (the futures of the Tinker API)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from sessions_app.models import ClientSession, Tenant


class TrainingRun(models.Model):
    """A LoRA adapter being trained; its id is ``{session_id}:train:{model_seq_id}``."""

    id = models.CharField(primary_key=True, max_length=100)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="training_runs")
    session = models.ForeignKey(ClientSession, on_delete=models.CASCADE, related_name="training_runs")
    model_seq_id = models.IntegerField()
    base_model = models.CharField(max_length=200)
    lora_rank = models.IntegerField()
    lora_seed = models.BigIntegerField(null=True, blank=True)
    train_mlp = models.BooleanField(default=True)
    train_attn = models.BooleanField(default=True)
    train_unembed = models.BooleanField(default=True)
    user_metadata = models.JSONField(default=dict, blank=True)
    # The seq_id of the next operation allowed to execute (0 is the creating op).
    next_seq_id = models.IntegerField(default=0)
    # Set once the run's adapter exists (after create_model or create-via-load).
    ready = models.BooleanField(default=False)
    released = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_request_at = models.DateTimeField(default=timezone.now)
    # Distributed mode (workers.handoff): the seq_id whose effect the run's
    # latest automatic internal checkpoint holds (adapter + optimizer), and the
    # lease that lets one worker at a time execute the run's operations.
    state_seq = models.IntegerField(null=True, blank=True)
    lease_owner = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["session", "model_seq_id"], name="unique_run_per_session_seq")]

    def __str__(self) -> str:
        return self.id

    @property
    def display_name(self) -> str:
        """A readable name: the ``name`` the client put in its metadata, else session and run number.

        Reads ``session``: select it with the run when listing many.
        """
        name = str((self.user_metadata or {}).get("name") or "").strip()
        if name:
            return name[:80]
        return f"{self.session.display_name or self.session_id} #{self.model_seq_id}"


class Checkpoint(models.Model):
    class Kind(models.TextChoices):
        TRAINING = "weights"  # save_state: adapter + optimizer
        SAMPLER = "sampler_weights"  # save_weights_for_sampler: adapter only
        EXTERNAL = "external_weights"  # save_weights_external: adapter only, downloadable

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="checkpoints")
    training_run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="checkpoints")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    name = models.CharField(max_length=200)
    tinker_path = models.CharField(max_length=400, unique=True)
    # Relative to TUFT_CHECKPOINT_DIR: {tenant_id}/{run}/{kind}/{name}
    storage_path = models.CharField(max_length=500)
    size_bytes = models.BigIntegerField(default=0)
    public = models.BooleanField(default=False)
    user_metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return self.tinker_path

    @property
    def checkpoint_id(self) -> str:
        return f"{self.kind}/{self.name}"


class Operation(models.Model):
    """One asynchronous request and its result: a Tinker future.

    Training operations carry the run and its ``seq_id`` and execute strictly in
    that order; sampling operations carry the sampling session. Everything the
    worker needs is stored here (``request``/``request_blob``), so nothing lives
    only in memory.
    """

    class Kind(models.TextChoices):
        CREATE_MODEL = "create_model"
        FORWARD_BACKWARD = "forward_backward"
        FORWARD = "forward"
        OPTIM_STEP = "optim_step"
        SAVE_WEIGHTS = "save_weights"
        SAVE_WEIGHTS_FOR_SAMPLER = "save_weights_for_sampler"
        LOAD_WEIGHTS = "load_weights"
        SAVE_WEIGHTS_EXTERNAL = "save_weights_external"
        SAMPLE = "sample"

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"

    request_id = models.CharField(primary_key=True, max_length=64)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="operations")
    kind = models.CharField(max_length=40, choices=Kind.choices)
    training_run = models.ForeignKey(
        TrainingRun, null=True, blank=True, on_delete=models.CASCADE, related_name="operations"
    )
    sampling_session = models.ForeignKey(
        "sampling_app.SamplingSession", null=True, blank=True, on_delete=models.CASCADE, related_name="operations"
    )
    seq_id = models.IntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    request = models.JSONField(default=dict, blank=True)
    request_blob = models.BinaryField(null=True, blank=True)  # protobuf forward_backward body
    result = models.JSONField(null=True, blank=True)
    result_blob = models.BinaryField(null=True, blank=True)  # protobuf result (fwd/bwd, sample)
    error = models.TextField(blank=True)
    error_category = models.CharField(max_length=16, blank=True)  # "user" | "server"
    # Metrics of the result (e.g. "loss:sum"), kept queryable for dashboards.
    metrics = models.JSONField(null=True, blank=True)
    # Tokens processed, for usage accounting.
    num_tokens = models.IntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Distributed mode: the worker running it, until when that worker's claim
    # holds (renewed while it is alive), and how many times it was started.
    worker = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["training_run", "seq_id"], name="unique_run_seq",
                condition=models.Q(training_run__isnull=False),
            ),
            models.UniqueConstraint(
                fields=["sampling_session", "seq_id"], name="unique_sampler_seq",
                condition=models.Q(sampling_session__isnull=False),
            ),
        ]
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.request_id}"

    @property
    def is_done(self) -> bool:
        return self.status in (self.Status.COMPLETED, self.Status.FAILED)
