"""engine.checkpoints: a failed checkpoint write never destroys the checkpoint it would replace."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine import checkpoints
from engine.checkpoints import atomic_directory


def test_a_write_whose_temporary_directory_vanishes_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process deletes our temporary directory just before the final rename
    (seen with distributed workers): the rename fails, the previous checkpoint stays."""
    final = tmp_path / "seq-0"
    with atomic_directory(final) as tmp:
        (tmp / "weights").write_text("first")

    fsync_tree = checkpoints._fsync_tree

    def fsync_then_vanish(root: Path) -> None:
        fsync_tree(root)
        shutil.rmtree(root)

    monkeypatch.setattr(checkpoints, "_fsync_tree", fsync_then_vanish)
    with pytest.raises(FileNotFoundError):
        with atomic_directory(final, overwrite=True) as tmp:
            (tmp / "weights").write_text("second")
    assert (final / "weights").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["seq-0"]  # nothing left behind


def test_overwrite_replaces_the_checkpoint_and_leaves_no_temporaries(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    for content in ("first", "second"):
        with atomic_directory(final, overwrite=True) as tmp:
            (tmp / "weights").write_text(content)
    assert (final / "weights").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
