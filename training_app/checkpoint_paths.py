"""Tinker checkpoint paths and where their files live.

``tinker://{training_run_id}/{kind}/{name}`` where kind is ``weights`` (save_state:
adapter + optimizer), ``sampler_weights`` (adapter only) or ``external_weights``
(adapter only, for download). Files live under
``TUFT_CHECKPOINT_DIR/{tenant_id}/{training_run_id}/{kind}/{name}``: the kind is
part of the storage path, so ``weights/x`` and ``sampler_weights/x`` never
overwrite each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from engine.types import UserInputError

SCHEME = "tinker://"
KINDS = ("weights", "sampler_weights", "external_weights")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # fullmatch: "$" would accept a trailing newline


@dataclass(frozen=True)
class TinkerPath:
    run_id: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.run_id}/{self.kind}/{self.name}"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise UserInputError(
            f"invalid checkpoint name {name!r}: use 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def parse_tinker_path(path: str) -> TinkerPath:
    if not path.startswith(SCHEME):
        raise UserInputError(f"not a tinker path: {path!r} (expected tinker://<run>/<kind>/<name>)")
    parts = path[len(SCHEME):].split("/")
    if len(parts) != 3 or parts[1] not in KINDS or not parts[0]:
        raise UserInputError(
            f"invalid tinker path {path!r}: expected tinker://<run>/{{weights|sampler_weights|external_weights}}/<name>"
        )
    return TinkerPath(parts[0], parts[1], check_name(parts[2]))


def storage_relpath(tenant_id: int, path: TinkerPath) -> str:
    return f"{tenant_id}/{path.run_id}/{path.kind}/{path.name}"


def absolute(relpath: str) -> Path:
    return Path(settings.TUFT_CHECKPOINT_DIR) / relpath
