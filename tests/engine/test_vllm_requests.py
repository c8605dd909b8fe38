"""How every sampling option maps onto vLLM, and which requests the HF decoder serves instead.

Pure translation (no vLLM needed); the live behaviour is in tests/api/test_vllm_sampling.py.
"""

from __future__ import annotations

import pytest

from engine.sample_checks import stop_sequences
from engine.types import BaseModelSpec, SampleResult, SampleSpec
from engine.vllm_requests import (
    EXTRA_TEMPERATURE_ARG,
    _cut_at_stop,
    _with_prompt_scores,
    engine_kwargs,
    needs_hf,
    sampling_kwargs,
)

PROMPT = [5, 6, 7]


def test_every_option_reaches_vllm_and_eos_is_an_ordinary_stop_token() -> None:
    spec = SampleSpec(prompt=PROMPT, num_samples=3, temperature=0.7, top_k=5, top_p=0.9, seed=4,
                      stop_strings=["!"], topk_sample_logprobs=2)
    kwargs = sampling_kwargs(spec, max_tokens=9, stops=stop_sequences(spec, eos_token_id=0))
    expected = {"n": 3, "max_tokens": 9, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 4, "stop": ["!"],
                "include_stop_str_in_output": True, "ignore_eos": True, "logprobs": 2, "detokenize": True}
    assert {k: kwargs[k] for k in expected} == expected
    assert kwargs["stop_token_ids"] == [0], "no explicit stop: EOS"
    never = SampleSpec(prompt=PROMPT, stop_token_seqs=[])
    assert sampling_kwargs(never, 4, stop_sequences(never, 0))["stop_token_ids"] == []
    off = sampling_kwargs(SampleSpec(prompt=PROMPT, top_k=-1), 4, [])
    assert off["top_k"] == 0 and off["logprobs"] == 0 and off["stop"] is None and not off["detokenize"]


def test_greedy_decodes_once_for_all_samples() -> None:
    assert sampling_kwargs(SampleSpec(prompt=PROMPT, num_samples=4, temperature=0), 4, [])["n"] == 1


def test_multi_token_stop_sequences_are_cut_after_their_last_token() -> None:
    assert _cut_at_stop([1, 2, 3, 4, 2, 3], [[2, 3]]) == 3
    assert _cut_at_stop([1, 2, 4], [[2, 3], [9]]) is None


@pytest.mark.parametrize("spec, reason", [
    (SampleSpec(prompt=PROMPT, target_prompt_ids=[[1], [2]]), "target_prompt_logprobs"),
    (SampleSpec(prompt=PROMPT, prompt_alt_tokens_k=2), "prompt_alt_tokens"),
    # vLLM serves these (prompt logprobs: unless an lm_head adapter is involved, engine.vllm_sampling).
    (SampleSpec(prompt=PROMPT, prompt_logprobs=True), None),
    (SampleSpec(prompt=PROMPT, topk_prompt_logprobs=2), None),
    (SampleSpec(prompt=PROMPT, temperature=2.5), None),
    (SampleSpec(prompt=PROMPT, temperature=2.0, topk_sample_logprobs=3, num_samples=2), None),
])
def test_what_the_hf_decoder_serves_instead(spec: SampleSpec, reason: str | None) -> None:
    got = needs_hf(spec)
    assert (got is None) if reason is None else (got is not None and reason in got)


def test_hotter_than_two_is_sent_at_two_with_the_rest_for_the_logits_processor() -> None:
    hot = sampling_kwargs(SampleSpec(prompt=PROMPT, temperature=5.0), 4, [])
    assert hot["temperature"] == 2.0 and hot["extra_args"] == {EXTRA_TEMPERATURE_ARG: 2.5}
    assert sampling_kwargs(SampleSpec(prompt=PROMPT, temperature=2.0), 4, [])["extra_args"] is None
    assert engine_kwargs(BaseModelSpec("m", "/m", 256), on_gpu=False)["logits_processors"] == [
        "engine.vllm_logits:ExtraTemperature"]


def test_prompt_scores_are_reported_like_the_hf_back_end() -> None:
    class Lp:  # vllm.logprobs.Logprob
        def __init__(self, logprob: float, rank: int) -> None:
            self.logprob, self.rank = logprob, rank

    rows = [None, {6: Lp(-0.5, 1), 9: Lp(-1.5, 2)}, {3: Lp(-0.1, 1), 7: Lp(-4.0, 5)}]
    spec = SampleSpec(prompt=PROMPT, prompt_logprobs=True, topk_prompt_logprobs=1)
    assert sampling_kwargs(spec, 1, [])["prompt_logprobs"] == 1
    got = _with_prompt_scores(SampleResult(sequences=[]), rows, spec)
    assert got.prompt_logprobs == [None, -0.5, -4.0]
    assert got.topk_prompt_logprobs == [None, [(6, -0.5)], [(3, -0.1)]]
    last = _with_prompt_scores(SampleResult(sequences=[]), rows,
                               SampleSpec(prompt=PROMPT, prompt_logprobs=True, prompt_logprobs_last_n=1))
    assert last.prompt_logprobs == [None, None, -4.0]
    assert sampling_kwargs(SampleSpec(prompt=PROMPT), 1, [])["prompt_logprobs"] is None


def test_engine_arguments_come_from_models_yaml() -> None:
    spec = BaseModelSpec("m", "/models/m", max_model_len=512, tensor_parallel_size=2, max_lora_rank=16,
                         sampler="vllm", max_loras=3, max_cpu_loras=9, gpu_memory_utilization=0.4)
    cpu, gpu = engine_kwargs(spec, on_gpu=False), engine_kwargs(spec, on_gpu=True)
    for kwargs in (cpu, gpu):
        assert {k: kwargs[k] for k in ("max_model_len", "tensor_parallel_size", "max_loras", "max_lora_rank",
                                       "max_cpu_loras", "enable_lora", "logprobs_mode")} == {
            "max_model_len": 512, "tensor_parallel_size": 2, "max_loras": 3, "max_lora_rank": 16,
            "max_cpu_loras": 9, "enable_lora": True, "logprobs_mode": "raw_logprobs"}
    assert cpu["dtype"] == "float32" and cpu["enforce_eager"] and "gpu_memory_utilization" not in cpu
    assert gpu["dtype"] == "bfloat16" and gpu["gpu_memory_utilization"] == 0.4
