"""Checkpoint files: PEFT adapters (plus optimizer state), written atomically.

A checkpoint is a directory holding
  adapter_config.json + adapter_model.safetensors   standard PEFT adapter
  optimizer.pt                                       AdamW state (training checkpoints only)
  tuft_meta.json                                     base model, LoRA spec, step count
It is written to a hidden temporary directory beside its final name and then
renamed into place, so a crash never leaves half a checkpoint under the name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from engine.types import LoraSpec, UserInputError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
OPTIMIZER_STATE = "optimizer.pt"
META = "tuft_meta.json"


def _fsync_tree(root: Path) -> None:
    for path in root.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def move_into_place(source: Path, final: Path) -> None:
    """Rename the complete directory ``source`` to ``final``, replacing what is there.

    If the last rename fails (e.g. ``source`` vanished) the previous ``final``
    is put back: a failed write never destroys the checkpoint it would replace.
    """
    if not final.exists():
        os.rename(source, final)
        return
    trash = final.parent / f".old-{final.name}-{uuid.uuid4().hex}"
    os.rename(final, trash)
    try:
        os.rename(source, final)
    except BaseException:
        os.rename(trash, final)
        raise
    shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def atomic_directory(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success it becomes ``final`` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise UserInputError(f"checkpoint {final.name!r} already exists")
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    (directory / META).write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_meta(directory: Path) -> dict[str, Any]:
    path = directory / META
    return json.loads(path.read_text()) if path.exists() else {}


def lora_spec_from_checkpoint(directory: Path) -> LoraSpec:
    """The LoRA shape of a checkpoint: ours (tuft_meta.json) or any PEFT adapter."""
    meta = read_meta(directory)
    if "lora" in meta:
        return LoraSpec(**meta["lora"])
    config_path = directory / ADAPTER_CONFIG
    if not config_path.exists():
        raise UserInputError(f"no PEFT adapter at {directory.name!r}")
    config = json.loads(config_path.read_text())
    targets = set(config.get("target_modules") or [])
    return LoraSpec(
        rank=int(config["r"]),
        train_attn=bool(targets & {"q_proj", "k_proj", "v_proj", "o_proj"}),
        train_mlp=bool(targets & {"gate_proj", "up_proj", "down_proj"}),
        train_unembed="lm_head" in targets,
    )


def directory_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
