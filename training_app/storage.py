"""Checkpoint storage as operators see it: disk use, free space, and files no checkpoint owns.

Checkpoints live at ``TUFT_CHECKPOINT_DIR/{tenant}/{run}/{kind}/{name}``. A
directory there that no ``Checkpoint`` row names is an orphan (a row deleted
without its files, a crash between writing and recording, a restored database),
and so are the ``.tmp-*``/``.old-*`` leftovers of an interrupted atomic write.
Only orphans older than ``ORPHAN_MIN_AGE_S`` count, so a save that is between
its rename and its database row is never taken for one. ``_internal`` (the
distributed workers' automatic run state) is theirs to manage and is skipped.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db.models import Sum

from training_app.checkpoint_paths import KINDS
from training_app.models import Checkpoint

logger = logging.getLogger(__name__)

ORPHAN_MIN_AGE_S = 3600.0
INTERNAL_DIR = "_internal"


@dataclass(frozen=True)
class Orphan:
    relpath: str  # relative to TUFT_CHECKPOINT_DIR
    size_bytes: int
    age_s: float


@dataclass(frozen=True)
class StorageReport:
    directory: str
    disk_total: int
    disk_free: int
    on_disk_bytes: int  # everything under the checkpoint directory
    recorded_bytes: int  # what Checkpoint rows say they hold
    checkpoints: int
    orphans: list[Orphan]

    @property
    def disk_used_percent(self) -> float:
        return 100.0 * (self.disk_total - self.disk_free) / self.disk_total if self.disk_total else 0.0

    @property
    def orphan_bytes(self) -> int:
        return sum(o.size_bytes for o in self.orphans)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _candidates(root: Path) -> list[Path]:
    """Directories at checkpoint depth ({tenant}/{run}/{kind}/{name}), outside _internal."""
    found = []
    for tenant_dir in (p for p in root.iterdir() if p.is_dir() and p.name != INTERNAL_DIR):
        for run_dir in (p for p in tenant_dir.iterdir() if p.is_dir()):
            for kind_dir in (p for p in run_dir.iterdir() if p.is_dir() and p.name in KINDS):
                found.extend(p for p in kind_dir.iterdir() if p.is_dir())
    return found


def find_orphans(root: Path, now: float | None = None) -> list[Orphan]:
    if not root.exists():
        return []
    now = time.time() if now is None else now
    owned = set(Checkpoint.objects.values_list("storage_path", flat=True))
    orphans = []
    for path in _candidates(root):
        relpath = path.relative_to(root).as_posix()
        age = now - path.stat().st_mtime
        if relpath in owned or age < ORPHAN_MIN_AGE_S:
            continue
        orphans.append(Orphan(relpath, _size(path), age))
    return sorted(orphans, key=lambda o: -o.size_bytes)


def storage_report() -> StorageReport:
    root = Path(settings.TUFT_CHECKPOINT_DIR)
    root.mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(root)
    recorded = Checkpoint.objects.aggregate(total=Sum("size_bytes"))["total"] or 0
    return StorageReport(
        directory=str(root), disk_total=disk.total, disk_free=disk.free, on_disk_bytes=_size(root),
        recorded_bytes=int(recorded), checkpoints=Checkpoint.objects.count(), orphans=find_orphans(root),
    )


def do_delete_orphans(deleted_by: str) -> tuple[int, int]:
    """Delete every current orphan (found again now, not taken from a client); return (count, bytes)."""
    root = Path(settings.TUFT_CHECKPOINT_DIR)
    orphans = find_orphans(root)
    for orphan in orphans:
        shutil.rmtree(root / orphan.relpath, ignore_errors=True)
        logger.info("deleted orphaned checkpoint files %s (%d bytes) for %s", orphan.relpath, orphan.size_bytes,
                    deleted_by)
    return len(orphans), sum(o.size_bytes for o in orphans)
