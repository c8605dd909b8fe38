"""Many adapters, one pass: every row of a batch through its own run's LoRA adapter.

peft keeps the adapters (one per run, with peft's config and checkpoint
format) but applies one active adapter at a time. Its mixed-adapter batch
(``adapter_names=``) gathers each adapter's rows with an index list and
scatters the result back in place, in every layer and again in backward,
which on CPU costs more than batching saves. Here the engine computes the
LoRA term itself, over contiguous row ranges.

The rows of one request are contiguous, so a pass is a few segments
``[start, end)`` of rows sharing an adapter. For each LoRA linear layer, with
``y`` the frozen base layer's output::

    y[start:end] += B_k (A_k x[start:end]) * scale_k     for each segment of adapter k

computed on a split of the rows (no gather, no scatter) and joined with one
``torch.cat``, whose backward just splits the gradient. Every adapter keeps its own rank and
target set: a segment whose adapter does not target a layer (``train_mlp=False``
...) passes through it unchanged. The base matmuls, most of the work, run once
over all rows.

peft itself is told to add nothing (``adapter_names`` = ``"__base__"`` for
every row); a forward hook on each LoRA linear adds the segments' terms.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer

from engine.types import EngineError

logger = logging.getLogger(__name__)

# peft's name for "no adapter on this row" in a mixed-adapter batch.
BASE_ROW = "__base__"


@contextmanager
def rows_through_adapters(model: PeftModel, row_adapters: list[str]) -> Iterator[list[str]]:
    """While active, row k of a forward through ``model`` uses adapter ``row_adapters[k]``.

    Yields the ``adapter_names`` to pass to the model's forward. The caller
    holds the model's lock and has the model in eval mode (peft refuses
    ``adapter_names`` in training mode). Gradients reach exactly the adapters'
    own parameters, from their own rows, as in a plain peft forward.
    """
    segments = _segments(row_adapters)
    handles = []
    try:
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            if not any(name in module.lora_A for name, _, _ in segments):
                continue
            if not isinstance(module, LoraLinear):
                raise EngineError(f"batched LoRA supports linear layers only, not {type(module).__name__}")
            handles.append(module.register_forward_hook(partial(_add_lora_terms, segments=segments)))
        yield [BASE_ROW] * len(row_adapters)
    finally:
        for handle in handles:
            handle.remove()


def _segments(row_adapters: list[str]) -> list[tuple[str, int, int]]:
    """Maximal runs of equal adapters: ``(adapter, start, end)`` covering every row in order."""
    segments: list[tuple[str, int, int]] = []
    for row, name in enumerate(row_adapters):
        if segments and segments[-1][0] == name:
            segments[-1] = (name, segments[-1][1], row + 1)
        else:
            segments.append((name, row, row + 1))
    return segments


def _add_lora_terms(module: LoraLinear, args: tuple[torch.Tensor, ...], output: torch.Tensor, *,
                    segments: list[tuple[str, int, int]]) -> torch.Tensor:
    """Forward hook: ``output`` (the frozen base layer's) plus each segment's own LoRA term."""
    x = args[0]  # [R, ..., in]
    if x.shape[0] != segments[-1][2]:
        raise EngineError(f"LoRA layer got {x.shape[0]} rows, expected {segments[-1][2]}")
    # NOTE(batch): split, not slices: a slice's backward fills a zero tensor the
    # size of all rows, once per segment and layer; a split's backward is one cat.
    sizes = [end - start for _, start, end in segments]
    pieces = []
    for (name, _, _), rows_x, base in zip(segments, x.split(sizes), output.split(sizes)):
        if name not in module.lora_A:
            pieces.append(base)
            continue
        lora_a, lora_b = module.lora_A[name], module.lora_B[name]
        # Adapters train in fp32 even on a bf16 base (as peft does: cast in, cast back).
        term = lora_b(lora_a(rows_x.to(lora_a.weight.dtype))) * module.scaling[name]
        pieces.append(base + term.to(output.dtype))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)  # one segment: no copy


def linear_through_adapter(module: torch.nn.Module, x: torch.Tensor, adapter: str) -> torch.Tensor:
    """``module`` applied to rows ``x`` [..., in], all through ``adapter``, outside ``rows_through_adapters``.

    The frozen base layer plus the adapter's LoRA term, as the forward hook
    computes it; peft's own forward is not called (it would add whichever
    adapter is active). A layer that is not LoRA-wrapped is just called.
    """
    if not isinstance(module, LoraLayer):
        return module(x)
    base = module.base_layer(x)
    return _add_lora_terms(module, (x,), base, segments=[(adapter, 0, x.shape[0])])  # type: ignore[arg-type]
