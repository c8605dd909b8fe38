"""The save_weights_external operation: the run's adapter as a downloadable PEFT directory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import logging

from tinker import types as T

from training_app.handlers import _save
from training_app.models import Checkpoint, Operation
from workers.executor import Outcome, handles

if TYPE_CHECKING:  # importing the engine loads torch: keep it out of views and manage.py
    from engine.runtime import Engine

logger = logging.getLogger(__name__)


@handles(Operation.Kind.SAVE_WEIGHTS_EXTERNAL)
def _save_weights_external(engine: Engine, op: Operation) -> Outcome:
    body = T.SaveWeightsExternalRequest.model_validate(op.request)
    # Same files as a sampler checkpoint (adapter_config.json + adapter_model.safetensors),
    # kept under their own kind so they never overwrite a sampler save of the same name.
    ckpt = _save(engine, op, Checkpoint.Kind.EXTERNAL, body.path, False, True)
    return Outcome(result={"path": ckpt.tinker_path, "size_bytes": ckpt.size_bytes, "type": "save_weights_external"})
