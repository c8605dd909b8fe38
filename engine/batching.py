"""Cross-run batching: which requests share a pass, and one padded batch for them.

The scheduler hands the engine the ready ``forward_backward``/``forward``
requests of several runs at once (DESIGN.md "Many adapters, one pass"). The
engine runs the requests of one base model as few passes as the token budget
allows: each pass is one forward (and one backward) over the concatenated rows
of its requests, every row going through its own run's LoRA adapter.

This module holds the pieces that know nothing about runs or losses: the
token-budget split and the concatenation of per-request padded tensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

# NOTE(batch): the padded size (rows x longest row) of one pass. 8192 tokens is
# 64 requests of 128 tokens or 2 of 4096; the decoder's activations scale with
# it, so a larger budget needs the memory for them. The logits (tokens x vocab
# floats, 5 GB for 8192 tokens of a Qwen vocabulary) are made one request at a
# time on Qwen and Llama models (training.py), all at once on others. A single
# request above the budget still runs, alone in its pass: admission bounds
# request sizes, not this.
DEFAULT_MAX_BATCH_TOKENS = 8192


def split_by_token_budget(shapes: list[tuple[int, int]], max_tokens: int) -> list[list[int]]:
    """Group consecutive requests into passes of at most ``max_tokens`` padded tokens.

    ``shapes[i]`` is request i's ``(rows, longest row)``. A pass costs
    ``total rows x longest row over the pass`` (every row is padded to the
    longest). Requests keep their order: pass k holds a run of consecutive
    indices, and every index appears in exactly one pass. A request that alone
    exceeds the budget gets a pass of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    passes: list[list[int]] = []
    current: list[int] = []
    rows = longest = 0
    for i, (n_rows, n_tokens) in enumerate(shapes):
        grown_rows, grown_longest = rows + n_rows, max(longest, n_tokens)
        if current and grown_rows * grown_longest > max_tokens:
            passes.append(current)
            current, grown_rows, grown_longest = [], n_rows, n_tokens
        current.append(i)
        rows, longest = grown_rows, grown_longest
    if current:
        passes.append(current)
    return passes


@dataclass
class RowBatch:
    """The rows of several requests, right-padded to one length."""

    input_ids: torch.Tensor  # [R, T]
    attention_mask: torch.Tensor  # [R, T]
    adapter_names: list[str]  # [R]: the adapter each row goes through
    row_slices: list[slice]  # per request: its rows in [R]


def concat_rows(parts: list[tuple[torch.Tensor, torch.Tensor, str]]) -> RowBatch:
    """Stack each request's ``(input_ids [B_i, T_i], attention_mask [B_i, T_i], adapter)``.

    Rows are right-padded with token 0 and attention 0, so padding never
    influences a real position (causal attention looks only to the left).
    """
    total_rows = sum(ids.shape[0] for ids, _, _ in parts)
    longest = max(ids.shape[1] for ids, _, _ in parts)
    device = parts[0][0].device
    input_ids = torch.zeros(total_rows, longest, dtype=torch.long, device=device)
    attention = torch.zeros(total_rows, longest, dtype=torch.long, device=device)
    names: list[str] = []
    slices: list[slice] = []
    start = 0
    for ids, mask, adapter in parts:
        n_rows, n_tokens = ids.shape
        input_ids[start:start + n_rows, :n_tokens] = ids
        attention[start:start + n_rows, :n_tokens] = mask
        names += [adapter] * n_rows
        slices.append(slice(start, start + n_rows))
        start += n_rows
    return RowBatch(input_ids, attention, names, slices)
