"""The HF sampler batches concurrent requests across adapters.

Requests for different adapters (and the plain base model), prompts of
different lengths, different num_samples and stop rules decode in one batch;
each must get exactly what it gets alone (left padding, per-row adapter,
per-request RNG), and the batch must really be one pass per step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from engine.model_host import ModelHost, lora_config_for
from engine.sampling import HFSampler
from engine.types import BaseModelSpec, LoraSpec, SampleRequest, SampleSpec, UserInputError


def _random_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A PEFT adapter with non-zero A and B, so it really changes the model's outputs."""
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, lora_config_for(LoraSpec(rank=4)))
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.3
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sampler(tiny_model_dir: Path) -> HFSampler:
    spec = BaseModelSpec(model_name="tiny", model_path=str(tiny_model_dir), max_model_len=128)
    return HFSampler(ModelHost(spec, device=torch.device("cpu")))


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("adapters")
    return [str(_random_adapter(tiny_model_dir, root / f"adapter{i}", seed=i)) for i in range(3)]


def _requests(adapters: list[str]) -> list[SampleRequest]:
    a, b, c = adapters
    return [
        SampleRequest("tiny", None, SampleSpec(prompt=[5, 17, 300, 42], max_tokens=6, temperature=0,
                                               stop_token_seqs=[])),
        SampleRequest("tiny", a, SampleSpec(prompt=[9, 8, 7, 6, 5, 4, 3, 2, 1, 11, 12], num_samples=3,
                                            max_tokens=7, temperature=1.3, seed=11, stop_token_seqs=[],
                                            topk_sample_logprobs=2)),
        SampleRequest("tiny", b, SampleSpec(prompt=[77, 78], max_tokens=5, top_k=5, top_p=0.9, seed=5,
                                            stop_token_seqs=[], prompt_logprobs=True)),
        SampleRequest("tiny", a, SampleSpec(prompt=[300, 301, 302, 303, 304, 305], max_tokens=9, temperature=0,
                                            stop_token_seqs=[], prompt_logprobs=True, topk_prompt_logprobs=3)),
        SampleRequest("tiny", c, SampleSpec(prompt=[1, 2, 3], num_samples=2, max_tokens=3, temperature=0.8,
                                            seed=99, stop_token_seqs=[], prompt_alt_tokens_k=2)),
    ]


def test_a_batch_across_adapters_gives_every_request_what_it_gets_alone(
    sampler: HFSampler, adapters: list[str]
) -> None:
    requests = _requests(adapters)
    alone = [sampler.sample_many([req])[0] for req in requests]
    batched = sampler.sample_many(requests)
    for req, one, many in zip(requests, alone, batched):
        assert not isinstance(one, Exception) and not isinstance(many, Exception)
        assert [s.tokens for s in many.sequences] == [s.tokens for s in one.sequences], req
        assert len(many.sequences) == req.spec.num_samples
        for s_one, s_many in zip(one.sequences, many.sequences):
            assert len(s_many.tokens) == req.spec.max_tokens and s_many.stop_reason == "length"
            assert s_many.logprobs == pytest.approx(s_one.logprobs, abs=1e-5)
        if req.spec.prompt_logprobs:
            assert many.prompt_logprobs is not None and one.prompt_logprobs is not None
            assert many.prompt_logprobs[0] is None
            assert many.prompt_logprobs[1:] == pytest.approx(one.prompt_logprobs[1:], abs=1e-5)
        assert many.prompt_alt_tokens == one.prompt_alt_tokens


def test_each_row_uses_its_own_adapter(sampler: HFSampler, adapters: list[str]) -> None:
    spec = SampleSpec(prompt=[5, 17, 300, 42], max_tokens=8, temperature=0, stop_token_seqs=[])
    outcomes = sampler.sample_many([SampleRequest("tiny", a, spec) for a in [None, *adapters]])
    tokens = [tuple(o.sequences[0].tokens) for o in outcomes if not isinstance(o, Exception)]
    assert len(set(tokens)) == len(tokens) == 4, "base and three adapters decode differently"
    # ... and each equals a plain greedy decode of peft with that adapter alone.
    base = AutoModelForCausalLM.from_pretrained(sampler.host.spec.model_path, dtype=torch.float32)
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, adapters[1]).eval()
    seq = list(spec.prompt)
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    assert list(tokens[2]) == seq[len(spec.prompt):]


def test_the_batch_is_one_forward_pass_per_step(sampler: HFSampler, adapters: list[str]) -> None:
    calls = 0

    def count(*_: object) -> None:
        nonlocal calls
        calls += 1

    spec = SampleSpec(prompt=[5, 6, 7], max_tokens=4, temperature=0, stop_token_seqs=[])
    handle = sampler.host.base.register_forward_hook(count)
    try:
        sampler.sample_many([SampleRequest("tiny", a, spec) for a in adapters])
    finally:
        handle.remove()
    assert calls == 4, "one prefill and three decode steps for all three adapters together"


def test_a_request_that_stops_early_leaves_the_others_decoding(sampler: HFSampler, adapters: list[str]) -> None:
    free = sampler.sample_many([SampleRequest("tiny", adapters[0], SampleSpec(
        prompt=[5, 6, 7], max_tokens=10, temperature=0, stop_token_seqs=[]))])[0]
    assert not isinstance(free, Exception)
    stop_at = free.sequences[0].tokens[1]
    short = SampleRequest("tiny", adapters[0], SampleSpec(prompt=[5, 6, 7], max_tokens=10, temperature=0,
                                                          stop_token_seqs=[[stop_at]]))
    long = SampleRequest("tiny", adapters[1], SampleSpec(prompt=[8, 9], max_tokens=10, temperature=0,
                                                         stop_token_seqs=[]))
    long_alone = sampler.sample_many([long])[0]
    got_short, got_long = sampler.sample_many([short, long])
    assert not isinstance(got_short, Exception) and not isinstance(got_long, Exception)
    first = free.sequences[0].tokens.index(stop_at)
    assert got_short.sequences[0].tokens == free.sequences[0].tokens[:first + 1]
    assert got_short.sequences[0].stop_reason == "stop"
    assert not isinstance(long_alone, Exception)
    assert got_long.sequences[0].tokens == long_alone.sequences[0].tokens


def test_a_bad_request_or_adapter_fails_only_its_own_slot(
    sampler: HFSampler, adapters: list[str], tmp_path: Path
) -> None:
    good = SampleRequest("tiny", adapters[0], SampleSpec(prompt=[5, 6], max_tokens=3, temperature=0))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    (broken / "adapter_config.json").write_text("{}")
    outcomes = sampler.sample_many([
        good,
        SampleRequest("tiny", str(broken), SampleSpec(prompt=[5, 6], max_tokens=3)),
        SampleRequest("tiny", None, SampleSpec(prompt=[5, 6], max_tokens=500)),
        SampleRequest("tiny", str(tmp_path / "missing"), SampleSpec(prompt=[5, 6], max_tokens=3)),
        good,
    ])
    assert isinstance(outcomes[1], UserInputError) and "broken" in str(outcomes[1])
    assert isinstance(outcomes[2], UserInputError) and "max_model_len" in str(outcomes[2])
    assert isinstance(outcomes[3], UserInputError)
    assert not isinstance(outcomes[0], Exception) and not isinstance(outcomes[4], Exception)
    assert outcomes[0].sequences[0].tokens == outcomes[4].sequences[0].tokens
