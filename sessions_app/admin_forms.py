"""Admin forms for quotas: human labels, bytes entered as KB/MB/GB, "unlimited" spelled out."""

from __future__ import annotations

import logging
import re
from typing import Any

from django import forms
from django.template.defaultfilters import filesizeformat

logger = logging.getLogger(__name__)

# Binary units, the same as the byte figures shown everywhere else (Django's filesizeformat).
UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*$", re.IGNORECASE)

LABELS = {
    "max_training_runs": "Concurrent training runs",
    "max_lora_rank": "Largest LoRA rank",
    "max_sampling_sessions": "Sampling sessions",
    "max_checkpoint_bytes": "Checkpoint storage",
    "train_tokens_per_day": "Training tokens per day",
    "sample_tokens_per_day": "Sampling tokens per day",
}
HELP = {
    "max_training_runs": "Runs not yet released (a run is released when its session ends or it is stopped).",
    "max_checkpoint_bytes": "All of the tenant's checkpoints together, e.g. 500 MB or 20 GB.",
    "train_tokens_per_day": "Tokens of forward_backward and forward data; resets at 00:00 UTC.",
    "sample_tokens_per_day": "Prompt tokens plus max_tokens × num_samples requested; resets at 00:00 UTC.",
}
UNLIMITED_HELP = "Leave empty for unlimited."


def parse_size(text: str) -> int:
    """ "20 GB" -> 21474836480; a bare number is bytes. Raises ValueError on anything else."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(text)
    unit = match.group(2).upper()
    if unit and not unit.endswith("B"):
        unit += "B"  # "20G" means 20 GB
    return int(float(match.group(1)) * UNITS[unit])


def format_size(value: int | None) -> str:
    return "unlimited" if value is None else filesizeformat(value).replace("\xa0", " ")


def format_limit(value: int | None) -> str:
    return "unlimited" if value is None else f"{value:,}"


class SizeInput(forms.TextInput):
    def format_value(self, value: Any) -> str | None:
        if isinstance(value, int):  # an initial from the database, in bytes
            return format_size(value)
        return super().format_value(value)


class SizeField(forms.Field):
    """A byte count entered as "500 MB", "20 GB" or plain bytes; empty is unlimited (None)."""

    widget = SizeInput

    def to_python(self, value: Any) -> int | None:
        if value in (None, "") or (isinstance(value, str) and value.strip().lower() in ("", "unlimited")):
            return None
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError:
            raise forms.ValidationError("Enter a size such as 500 MB, 20 GB or a number of bytes.") from None

    def has_changed(self, initial: Any, data: Any) -> bool:
        try:
            return self.to_python(initial) != self.to_python(data)
        except forms.ValidationError:
            return True


class QuotaLimitsForm(forms.ModelForm):
    """The limit fields of ``Quota`` and ``DefaultQuota`` with readable labels and units."""

    max_checkpoint_bytes = SizeField(required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            if name in LABELS:
                field.label = LABELS[name]
                field.help_text = " ".join(filter(None, [HELP.get(name, ""), UNLIMITED_HELP]))
