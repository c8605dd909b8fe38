"""Deleting checkpoints: the row and the files, as one domain action.

Every way a checkpoint goes (the REST ``DELETE`` of its owner, the admin's
delete and bulk delete, TTL expiry) calls ``do_delete_checkpoints``, so none of
them can leave files behind or forget the quota: a tenant's checkpoint bytes
are the sum of its rows (``sessions_app.usage.checkpoint_bytes``), freed with
the row. Deleting the row also revokes access at once: download links and
other tenants' samplers check the row at use (``training_app.exports``,
``sampling_app.actions.checkpoint_still_readable``).

Files are removed atomically-safely: the directory is first renamed to a trash
name beside it (one rename: a reader sees the whole checkpoint or nothing, never
half of it), then removed. A crash between the two leaves only a trash
directory, which ``remove_leftover_trash`` clears at the next start.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from pathlib import Path
from typing import Iterable

from django.conf import settings
from django.db import transaction

from training_app.checkpoint_paths import absolute
from training_app.models import Checkpoint

logger = logging.getLogger(__name__)

# Checkpoint names start with a letter or digit (checkpoint_paths.check_name),
# so a trash name can never be a checkpoint's.
TRASH_PREFIX = ".trash-"


def do_delete_checkpoints(ckpts: Iterable[Checkpoint]) -> int:
    """Delete each checkpoint's row and files; returns how many rows were deleted."""
    deleted = 0
    for ckpt in ckpts:
        directory = absolute(ckpt.storage_path)
        trash: Path | None = None
        try:
            with transaction.atomic():
                count, _ = Checkpoint.objects.filter(pk=ckpt.pk).delete()
                # Inside the transaction: if the files cannot be moved the row stays.
                trash = _move_to_trash(directory)
        except BaseException:
            if trash is not None:  # the row survived (commit failed): put the files back
                trash.rename(directory)
            raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        deleted += count
        logger.info("deleted checkpoint %s of tenant %s (%d bytes)", ckpt.tinker_path, ckpt.tenant_id,
                    ckpt.size_bytes)
    return deleted


def _move_to_trash(directory: Path) -> Path | None:
    trash = directory.with_name(f"{TRASH_PREFIX}{directory.name}-{secrets.token_hex(6)}")
    try:
        directory.rename(trash)
    except FileNotFoundError:
        return None  # no files (already gone): deleting the row is all there is to do
    return trash


def remove_leftover_trash() -> int:
    """Remove trash directories a crashed deletion left: ``{tenant}/{run}/{kind}/.trash-*``."""
    leftovers = list(Path(settings.TUFT_CHECKPOINT_DIR).glob(f"*/*/*/{TRASH_PREFIX}*"))
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    if leftovers:
        logger.info("removed %d leftover checkpoint trash director(ies)", len(leftovers))
    return len(leftovers)
