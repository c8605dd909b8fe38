"""Process-wide, settings-derived objects: the parsed models.yaml.

Like DRF's ``api_settings``, this is an explicit cache of configuration, reset
when Django's settings change (tests override them).
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.core.signals import setting_changed

from tuft_project.model_config import TuftConfig, load_config


@functools.cache
def get_config() -> TuftConfig:
    return load_config(settings.TUFT_MODEL_CONFIG)


def _reset(**kwargs: object) -> None:
    get_config.cache_clear()


setting_changed.connect(_reset)
