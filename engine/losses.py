"""Loss functions selected by name in forward_backward.

Each loss takes the target-token logprobs of the current model plus the
per-token inputs the client sent (already padded into ``[B, T]`` tensors, with
``mask`` marking real positions) and returns the scalar loss to minimise and
the per-token loss. Losses are sums over tokens and data, as in Tinker: the
client chooses the normalisation through its weights or advantages.
docs/losses.md gives every formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from engine.types import UserInputError


@dataclass
class LossInputs:
    logprobs: torch.Tensor  # [B, T] (or [B, T, K]) logprobs of target_tokens under the model
    mask: torch.Tensor  # [B, T] 1.0 on real positions, 0.0 on padding
    inputs: dict[str, torch.Tensor]  # padded client inputs, each [B, T] (weights, advantages...)
    config: dict[str, float | str]


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar
    elementwise: torch.Tensor  # [B, T] (or [B, T, K])
    metrics: dict[str, float]


LossFn = Callable[[LossInputs], LossOutput]

# Inputs each loss requires besides target_tokens; "weights" defaults to 1.
REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {}
LOSSES: dict[str, LossFn] = {}


def register(name: str, required: tuple[str, ...] = ()) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        REQUIRED_INPUTS[name] = required
        return fn

    return deco


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise UserInputError(f"unknown loss function {name!r}; supported: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def _config_float(config: dict[str, float | str], key: str, default: float) -> float:
    value = config.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"loss_fn_config[{key!r}] must be a number, got {value!r}") from None


@register("cross_entropy")
def cross_entropy(x: LossInputs) -> LossOutput:
    """loss = sum_t -w_t * logp_t  (weights default to 1 on real tokens)."""
    weights = x.inputs.get("weights")
    if weights is None:
        weights = x.mask.view(*x.mask.shape, *([1] * (x.logprobs.dim() - 2))).expand_as(x.logprobs)
    elementwise = -weights * x.logprobs
    return LossOutput(elementwise.sum(), elementwise, {})
