"""Translating between the engine's sample types and vLLM's, without importing vLLM.

Kept apart from ``engine.vllm_sampling`` (which drives the engine) so that the
mapping of every sampling option reads in one place.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from engine.sample_checks import MAX_LOGPROBS_K
from engine.types import BaseModelSpec, SampledSequence, SampleResult, SampleSpec

logger = logging.getLogger(__name__)

# vLLM samples greedily below this temperature (its _SAMPLING_EPS) and then refuses n > 1.
GREEDY_BELOW = 1e-5
# vLLM refuses hotter sampling (a range check in SamplingParams); hotter requests are sent
# at this temperature and engine.vllm_logits.ExtraTemperature divides by the rest.
VLLM_MAX_TEMPERATURE = 2.0
EXTRA_TEMPERATURE_PROCESSOR = "engine.vllm_logits:ExtraTemperature"  # loaded by name in vLLM's engine core
EXTRA_TEMPERATURE_ARG = "tuft_extra_temperature"  # SamplingParams.extra_args key it reads


def engine_kwargs(spec: BaseModelSpec, on_gpu: bool) -> dict[str, Any]:
    """``vllm.EngineArgs`` for one base model, from its models.yaml entry."""
    return {
        "model": spec.model_path,
        "tokenizer": spec.model_path,
        "max_model_len": spec.max_model_len,
        "tensor_parallel_size": spec.tensor_parallel_size,
        "enable_lora": True,
        "max_loras": spec.max_loras,
        "max_lora_rank": spec.max_lora_rank,
        "max_cpu_loras": spec.max_cpu_loras,
        # NOTE: fp32 on CPU like the trainer, so sampled-token logprobs equal the
        # trainer's to ~1e-6; on GPU the trainer runs bf16 and so does vLLM.
        "dtype": "bfloat16" if on_gpu else "float32",
        "enforce_eager": not on_gpu,
        # Logprobs of the model itself, before temperature/top-k/top-p (as the trainer's).
        "logprobs_mode": "raw_logprobs",
        "max_logprobs": MAX_LOGPROBS_K,
        # Sampling defaults come from each request, never from generation_config.json.
        "generation_config": "vllm",
        "disable_log_stats": True,
        "seed": 0,
        # Lifts vLLM's temperature limit of 2 (see ``sampling_kwargs``).
        "logits_processors": [EXTRA_TEMPERATURE_PROCESSOR],
        **({"gpu_memory_utilization": spec.gpu_memory_utilization} if on_gpu else {}),
    }


def sampling_kwargs(spec: SampleSpec, max_tokens: int, stops: list[list[int]]) -> dict[str, Any]:
    """``vllm.SamplingParams`` fields for a request; ``stops`` from ``stop_sequences``.

    EOS is not special: ``stops`` already holds it unless the request said
    ``stop=[]``, so vLLM's own EOS rule is off (``ignore_eos``). vLLM stops on
    single tokens only; longer stop sequences are cut afterwards (``to_result``).
    """
    greedy = spec.temperature < GREEDY_BELOW
    # vLLM refuses temperature > 2; the rest is divided out by engine.vllm_logits.
    temperature = min(spec.temperature, VLLM_MAX_TEMPERATURE)
    extra = {EXTRA_TEMPERATURE_ARG: spec.temperature / VLLM_MAX_TEMPERATURE} if spec.temperature > temperature else None
    return {
        # Greedy rows are all alike: decode one and copy it (``to_result``).
        "n": 1 if greedy else spec.num_samples,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "extra_args": extra,
        "top_p": spec.top_p,
        "top_k": spec.top_k if spec.top_k > 0 else 0,
        "seed": spec.seed,
        "stop": list(spec.stop_strings) or None,
        "include_stop_str_in_output": True,
        "skip_special_tokens": False,
        "stop_token_ids": [seq[0] for seq in stops if len(seq) == 1],
        "ignore_eos": True,
        "logprobs": spec.topk_sample_logprobs,
        # 0: each prompt token's own logprob; k: plus the k most likely (raw, like sampled ones).
        "prompt_logprobs": spec.topk_prompt_logprobs if scores_prompt(spec) else None,
        "detokenize": bool(spec.stop_strings),
    }


def _cut_at_stop(tokens: list[int], stops: list[list[int]]) -> int | None:
    """Length of ``tokens`` up to and including the first multi-token stop sequence."""
    for end in range(1, len(tokens) + 1):
        for seq in stops:
            if len(seq) > 1 and end >= len(seq) and tokens[end - len(seq):end] == seq:
                return end
    return None


def _topk(entries: dict[int, Any], k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely (token, logprob) pairs of one position, most likely first."""
    ranked = sorted((lp.rank, tok, lp.logprob) for tok, lp in entries.items() if lp.rank is not None)
    return [(tok, float(logprob)) for rank, tok, logprob in ranked if rank <= k][:k]


def _sequence(completion: Any, spec: SampleSpec, stops: list[list[int]]) -> SampledSequence:
    tokens = list(completion.token_ids)
    rows = list(completion.logprobs or [])
    logprobs = [float(row[tok].logprob) for tok, row in zip(tokens, rows)]
    stop_reason = "stop" if completion.finish_reason == "stop" else "length"
    cut = _cut_at_stop(tokens, stops)
    if cut is not None:
        tokens, logprobs, rows, stop_reason = tokens[:cut], logprobs[:cut], rows[:cut], "stop"
    topk = [_topk(row, spec.topk_sample_logprobs) for row in rows] if spec.topk_sample_logprobs else None
    return SampledSequence(tokens=tokens, logprobs=logprobs, stop_reason=stop_reason, topk=topk)


def to_result(output: Any, spec: SampleSpec, stops: list[list[int]]) -> SampleResult:
    """A finished ``vllm.RequestOutput`` as the engine's ``SampleResult``."""
    completions = sorted(output.outputs, key=lambda c: c.index)
    sequences = [_sequence(c, spec, stops) for c in completions]
    if len(sequences) == 1 < spec.num_samples:  # greedy: one decode stands for every sample
        sequences *= spec.num_samples
    result = SampleResult(sequences=sequences)
    if scores_prompt(spec):
        result = _with_prompt_scores(result, list(output.prompt_logprobs or []), spec)
    return result


def _with_prompt_scores(result: SampleResult, rows: list[Any], spec: SampleSpec) -> SampleResult:
    """vLLM's prompt logprobs (``rows[i]``: position i, None at 0) as the HF back end reports them.

    Positions before the last ``prompt_logprobs_last_n`` are not reported (None).
    """
    prompt = spec.prompt
    first = 1 + (len(prompt) - 1 - spec.prompt_logprobs_last_n if spec.prompt_logprobs_last_n is not None else 0)
    scored = range(max(1, first), len(prompt))
    if spec.prompt_logprobs:
        values: list[float | None] = [None] * len(prompt)
        for i in scored:
            values[i] = float(rows[i][prompt[i]].logprob)
        result = dataclasses.replace(result, prompt_logprobs=values)
    if spec.topk_prompt_logprobs:
        topk: list[list[tuple[int, float]] | None] = [None] * len(prompt)
        for i in scored:
            topk[i] = _topk(rows[i], spec.topk_prompt_logprobs)
        result = dataclasses.replace(result, topk_prompt_logprobs=topk)
    return result


def scores_prompt(spec: SampleSpec) -> bool:
    """The request asks for prompt logprobs or top-k prompt logprobs (what vLLM can compute)."""
    return bool(spec.prompt_logprobs or spec.topk_prompt_logprobs)


def needs_hf(spec: SampleSpec) -> str | None:
    """Why the HF decoder on the same host must serve this request instead of vLLM (None: it need not).

    Per-id prompt scoring (``target_prompt_logprobs``) and alternative prompt tokens have
    no vLLM equivalent. Prompt logprobs with an ``lm_head`` adapter are decided per
    request by ``engine.vllm_sampling`` (it needs the adapter's files).
    """
    if spec.target_prompt_ids is not None:
        return "target_prompt_logprobs"
    if spec.prompt_alt_tokens_k:
        return "prompt_alt_tokens"
    return None
