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

added in place into ``y``'s rows (no gather, no scatter, no join), with a
hand-written backward (``_SegmentedLora``). Every adapter keeps its own rank and
target set: a segment whose adapter does not target a layer (``train_mlp=False``
...) passes through it unchanged. The base matmuls, most of the work, run once
over all rows.

peft itself is told to add nothing (``adapter_names`` = ``"__base__"`` for
every row, ``ModelHost.rows_through``); a forward hook on each LoRA linear
adds the segments' terms.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer

from engine.model_host import BASE_ROW, ModelHost
from engine.types import EngineError

logger = logging.getLogger(__name__)


@contextmanager
def rows_through_adapters(host: ModelHost, row_adapters: list[str]) -> Iterator[torch.nn.Module]:
    """While active, row k of a forward through the yielded model uses adapter ``row_adapters[k]``.

    Yields the causal LM to call (``ModelHost.rows_through``). The caller holds
    the host's lock. Gradients reach exactly the adapters' own parameters, from
    their own rows, as in a plain peft forward.
    """
    segments = _segments(row_adapters)
    names = {name for name, _, _ in segments}
    handles = []
    try:
        for module in host.adapter_layers():
            if not isinstance(module, LoraLayer) or not names & module.lora_A.keys():
                continue
            if not isinstance(module, LoraLinear):
                raise EngineError(f"batched LoRA supports linear layers only, not {type(module).__name__}")
            handles.append(module.register_forward_hook(partial(_add_lora_terms, segments=segments)))
        with host.rows_through([BASE_ROW] * len(row_adapters)) as model:
            yield model
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
    if len(segments) == 1:  # one adapter for all rows: plain autograd ops, nothing to join
        name = segments[0][0]
        if name not in module.lora_A:
            return output
        lora_a, lora_b = module.lora_A[name], module.lora_B[name]
        # Adapters train in fp32 even on a bf16 base (as peft does: cast in, cast back).
        term = lora_b(lora_a(x.to(lora_a.weight.dtype))) * module.scaling[name]
        return output + term.to(output.dtype)
    layout = tuple((start, end, module.scaling[name] if name in module.lora_A else None)
                   for name, start, end in segments)
    weights = [w for name, _, _ in segments if name in module.lora_A
               for w in (module.lora_A[name].weight, module.lora_B[name].weight)]
    return _SegmentedLora.apply(output, x, layout, *weights)


class _SegmentedLora(torch.autograd.Function):
    """``output[start:end] += B_k (A_k x[start:end]) * scale_k`` per segment, in place, with its own backward.

    NOTE(batch): written with autograd ops (split, add per segment, cat), every
    LoRA layer copied its whole output once to join the segments and again in
    backward to join their gradients (cat and zero-fill were ~6 % of a batched
    pass on CPU). Here the terms are added into the base layer's fresh output
    (nothing saved it for backward), and the backward writes each segment's
    input gradient into its slice of one tensor. The arithmetic is peft's:
    ``lora_B(lora_A(x)) * scaling``, differentiated by hand.
    """

    @staticmethod
    def forward(ctx, output: torch.Tensor, x: torch.Tensor,  # type: ignore[override]
                layout: tuple[tuple[int, int, float | None], ...], *weights: torch.Tensor) -> torch.Tensor:
        hidden_a: list[torch.Tensor] = []  # A_k x per segment with a term: [n, ..., r]
        pairs = iter(zip(weights[0::2], weights[1::2]))
        for start, end, scale in layout:
            if scale is None:
                continue
            weight_a, weight_b = next(pairs)
            ax = torch.matmul(x[start:end].to(weight_a.dtype), weight_a.t())
            output[start:end] += (torch.matmul(ax, weight_b.t()) * scale).to(output.dtype)
            hidden_a.append(ax)
        ctx.mark_dirty(output)
        ctx.layout = layout
        ctx.save_for_backward(x, *weights, *hidden_a)
        return output

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, *rest = ctx.saved_tensors
        n_weights = len(rest) - len(rest) // 3  # 2 weights and 1 A_k x per segment with a term
        weights, hidden_a = rest[:n_weights], rest[n_weights:]
        want_x = ctx.needs_input_grad[1]
        grad_x = torch.empty_like(x) if want_x else None
        grad_weights: list[torch.Tensor | None] = []
        k = 0
        for start, end, scale in ctx.layout:
            if scale is None:
                if grad_x is not None:
                    grad_x[start:end].zero_()
                continue
            weight_a, weight_b, ax = weights[2 * k], weights[2 * k + 1], hidden_a[k]
            needs_a, needs_b = ctx.needs_input_grad[3 + 2 * k], ctx.needs_input_grad[4 + 2 * k]
            k += 1
            g = grad[start:end].to(weight_b.dtype) * scale  # [n, ..., out]
            g_ax = torch.matmul(g, weight_b)  # [n, ..., r]
            grad_weights.append(g_ax.reshape(-1, g_ax.shape[-1]).t() @ x[start:end].reshape(-1, x.shape[-1])
                                .to(weight_a.dtype) if needs_a else None)
            grad_weights.append(g.reshape(-1, g.shape[-1]).t() @ ax.reshape(-1, ax.shape[-1])
                                if needs_b else None)
            if grad_x is not None:
                grad_x[start:end] = torch.matmul(g_ax, weight_a).to(x.dtype)
        return (grad, grad_x, None, *grad_weights)


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
