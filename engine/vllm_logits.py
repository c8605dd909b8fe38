"""A vLLM logits processor that lets a request sample hotter than vLLM's temperature limit.

vLLM 0.32 refuses ``temperature > 2`` in ``SamplingParams`` (a plain range check in
``_verify_args``; nothing in its sampler needs it). The API allows any temperature,
so ``engine.vllm_requests.sampling_kwargs`` sends such a request with temperature 2
and ``extra_args[EXTRA_TEMPERATURE_ARG] = temperature / 2``; this processor divides that
request's logits by the extra factor. vLLM applies argmax-invariant processors
right after its own temperature and before top-k/top-p (``vllm.v1.sample.sampler``),
so top-k/top-p see ``logits / temperature`` exactly as in the HF back end. Reported
logprobs are unaffected: with ``logprobs_mode="raw_logprobs"`` vLLM computes them
from the logits before any processing.

vLLM loads the class by name (``logits_processors`` in ``engine_kwargs``) inside its
engine-core process: keep this module's imports light (torch, vLLM, engine.vllm_requests).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from engine.vllm_requests import EXTRA_TEMPERATURE_ARG


class ExtraTemperature(LogitsProcessor):
    """Divides the logits of each request that carries ``extra_args[EXTRA_TEMPERATURE_ARG]`` by it."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self._scales: dict[int, float] = {}  # row of the persistent batch -> extra divisor

    def is_argmax_invariant(self) -> bool:
        # Dividing by a positive number keeps the argmax; vLLM then applies it only to
        # sampled rows, after its own temperature.
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self._scales, batch_update, _scale_of)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._scales:
            return logits
        rows = torch.tensor(list(self._scales), dtype=torch.long, device=logits.device)
        divisors = torch.tensor(list(self._scales.values()), dtype=logits.dtype, device=logits.device)
        logits[rows] = logits[rows] / divisors.unsqueeze(1)
        return logits


def _scale_of(params: Any, prompt_ids: list[int] | None, output_ids: list[int]) -> float | None:
    scale = (params.extra_args or {}).get(EXTRA_TEMPERATURE_ARG) if params is not None else None
    return float(scale) if scale else None
