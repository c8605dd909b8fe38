"""Engine unit tests of sampling: every SamplingParams field and every prompt-scoring option.

They run the HF sampler directly on the tiny model (CPU, no server) and compare
what it reports with a plain forward pass of the same model.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine.model_host import ModelHost
from engine.sampling import HFSampler
from engine.types import BaseModelSpec, SampleSpec, UserInputError

PROMPT = [5, 17, 300, 42, 99, 7, 250, 13]


@pytest.fixture(scope="module")
def sampler(tiny_model_dir: Path) -> HFSampler:
    spec = BaseModelSpec(model_name="tiny", model_path=str(tiny_model_dir), max_model_len=128)
    return HFSampler(ModelHost(spec, device=torch.device("cpu")))


def _prompt_logprobs(sampler: HFSampler, prompt: list[int]) -> torch.Tensor:
    """[P-1, V] logprobs of the base model at prompt positions 1..P-1."""
    with torch.no_grad():
        logits = sampler.host.base(input_ids=torch.tensor([prompt])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def test_prompt_logprobs_match_a_plain_forward_and_last_n_leaves_the_prefix_unscored(sampler: HFSampler) -> None:
    lp = _prompt_logprobs(sampler, PROMPT)
    expected = lp.gather(-1, torch.tensor(PROMPT[1:]).unsqueeze(-1)).squeeze(-1).tolist()
    full = sampler.sample(None, SampleSpec(prompt=PROMPT, max_tokens=1, prompt_logprobs=True, topk_prompt_logprobs=3))
    assert full.prompt_logprobs is not None and full.prompt_logprobs[0] is None
    assert full.prompt_logprobs[1:] == pytest.approx(expected, abs=1e-5)
    assert full.topk_prompt_logprobs is not None and full.topk_prompt_logprobs[0] is None
    top_ids = torch.topk(lp, 3, dim=-1).indices.tolist()
    assert [[t for t, _ in row] for row in full.topk_prompt_logprobs[1:]] == top_ids

    last = sampler.sample(None, SampleSpec(prompt=PROMPT, max_tokens=1, prompt_logprobs=True,
                                           topk_prompt_logprobs=3, prompt_logprobs_last_n=3))
    assert last.prompt_logprobs is not None and last.topk_prompt_logprobs is not None
    assert last.prompt_logprobs[:-3] == [None] * (len(PROMPT) - 3)
    assert last.prompt_logprobs[-3:] == pytest.approx(full.prompt_logprobs[-3:], abs=1e-5)
    assert last.topk_prompt_logprobs[:-3] == [None] * (len(PROMPT) - 3)
    assert last.topk_prompt_logprobs[-3:] == full.topk_prompt_logprobs[-3:]


def test_target_prompt_logprobs_score_the_named_ids(sampler: HFSampler) -> None:
    lp = _prompt_logprobs(sampler, PROMPT)
    ids = [[-1, -1] for _ in PROMPT[1:]]
    ids[2] = [11, 500]
    ids[-1] = [-1, 3]
    result = sampler.sample(None, SampleSpec(prompt=PROMPT, max_tokens=1, target_prompt_ids=ids))
    assert result.target_prompt_logprobs is not None
    got = result.target_prompt_logprobs
    assert len(got) == len(PROMPT) - 1 and all(len(row) == 2 for row in got)
    assert got[2] == pytest.approx([lp[2, 11].item(), lp[2, 500].item()], abs=1e-5)
    assert got[-1] == pytest.approx([0.0, lp[-1, 3].item()], abs=1e-5)
    assert got[0] == [0.0, 0.0]


def test_prompt_alt_tokens_are_draws_with_their_model_logprobs(sampler: HFSampler) -> None:
    lp = _prompt_logprobs(sampler, PROMPT)
    spec = SampleSpec(prompt=PROMPT, max_tokens=1, prompt_alt_tokens_k=4, seed=3)
    a, b = sampler.sample(None, spec), sampler.sample(None, spec)
    assert a.prompt_alt_tokens is not None and a.prompt_alt_logprobs is not None
    assert a.prompt_alt_tokens == b.prompt_alt_tokens, "same seed, same draws"
    assert len(a.prompt_alt_tokens) == len(PROMPT) - 1 and all(len(r) == 4 for r in a.prompt_alt_tokens)
    for i, (row, lps) in enumerate(zip(a.prompt_alt_tokens, a.prompt_alt_logprobs)):
        assert lps == pytest.approx([lp[i, t].item() for t in row], abs=1e-5)
    greedy = sampler.sample(None, SampleSpec(prompt=PROMPT, max_tokens=1, prompt_alt_tokens_k=2, temperature=0))
    assert greedy.prompt_alt_tokens == [[t, t] for t in lp.argmax(-1).tolist()]


def test_greedy_top_k_1_and_tiny_top_p_all_pick_the_argmax(sampler: HFSampler) -> None:
    # Greedy decoding by hand: the argmax chain of the base model.
    tokens = list(PROMPT)
    with torch.no_grad():
        for _ in range(6):
            tokens.append(int(sampler.host.base(input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
    expected = tokens[len(PROMPT):]
    for spec in (
        SampleSpec(prompt=PROMPT, max_tokens=6, temperature=0, stop_token_seqs=[]),
        SampleSpec(prompt=PROMPT, max_tokens=6, top_k=1, seed=1, stop_token_seqs=[]),
        SampleSpec(prompt=PROMPT, max_tokens=6, top_p=1e-6, seed=2, stop_token_seqs=[]),
    ):
        seq = sampler.sample(None, spec).sequences[0]
        assert seq.tokens == expected, spec
        assert seq.stop_reason == "length"


def test_seed_makes_sampling_deterministic_and_logprobs_are_the_models(sampler: HFSampler) -> None:
    spec = SampleSpec(prompt=PROMPT, num_samples=5, max_tokens=8, seed=1234, temperature=1.5, stop_token_seqs=[])
    a, b = sampler.sample(None, spec), sampler.sample(None, spec)
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    assert len(a.sequences) == 5 and len({tuple(s.tokens) for s in a.sequences}) > 1, "independent samples"
    other = sampler.sample(None, SampleSpec(prompt=PROMPT, num_samples=5, max_tokens=8, seed=99,
                                            temperature=1.5, stop_token_seqs=[]))
    assert [s.tokens for s in other.sequences] != [s.tokens for s in a.sequences]
    # Reported logprobs are the model's own (untempered) logprobs of the sampled tokens.
    seq = a.sequences[0]
    full = PROMPT + seq.tokens
    with torch.no_grad():
        lp = torch.log_softmax(sampler.host.base(input_ids=torch.tensor([full])).logits[0].float(), dim=-1)
    expected = [lp[len(PROMPT) - 1 + i, t].item() for i, t in enumerate(seq.tokens)]
    assert seq.logprobs == pytest.approx(expected, abs=1e-4)


def test_top_k_restricts_every_sampled_token_to_the_k_most_likely(sampler: HFSampler) -> None:
    result = sampler.sample(None, SampleSpec(prompt=PROMPT, num_samples=4, max_tokens=5, top_k=3, seed=5,
                                             temperature=2.0, stop_token_seqs=[], topk_sample_logprobs=3))
    for seq in result.sequences:
        assert seq.topk is not None and len(seq.topk) == len(seq.tokens)
        for tok, row in zip(seq.tokens, seq.topk):
            assert tok in [t for t, _ in row]


def test_stop_token_ids_and_stop_strings_end_generation_and_are_included(sampler: HFSampler) -> None:
    free = sampler.sample(None, SampleSpec(prompt=PROMPT, max_tokens=12, temperature=0, stop_token_seqs=[]))
    tokens = free.sequences[0].tokens
    stop_at = tokens[3]
    first = tokens.index(stop_at)
    stopped = sampler.sample(None, SampleSpec(prompt=PROMPT, max_tokens=12, temperature=0,
                                              stop_token_seqs=[[stop_at]])).sequences[0]
    assert stopped.tokens == tokens[: first + 1] and stopped.stop_reason == "stop"

    text = sampler.host.tokenizer.decode(tokens[:4])
    needle = text.strip()[-2:] if len(text.strip()) >= 2 else text
    by_string = sampler.sample(None, SampleSpec(prompt=PROMPT, max_tokens=12, temperature=0, stop_token_seqs=[],
                                                stop_strings=[needle])).sequences[0]
    assert by_string.stop_reason == "stop"
    assert needle in sampler.host.tokenizer.decode(by_string.tokens)
    assert by_string.tokens == tokens[: len(by_string.tokens)] and len(by_string.tokens) <= 4


@pytest.mark.parametrize(
    "spec, message",
    [
        (SampleSpec(prompt=PROMPT, prompt_logprobs=True, prompt_logprobs_last_n=len(PROMPT)), "prompt_logprobs_last_n"),
        (SampleSpec(prompt=PROMPT, prompt_logprobs_last_n=2), "set prompt_logprobs"),
        (SampleSpec(prompt=PROMPT, target_prompt_ids=[[1]]), "rows"),
        (SampleSpec(prompt=PROMPT, target_prompt_ids=[[-1]] * (len(PROMPT) - 1)), "names no token"),
        (SampleSpec(prompt=PROMPT, target_prompt_ids=[[5000]] * (len(PROMPT) - 1)), "outside the vocabulary"),
        (SampleSpec(prompt=PROMPT, prompt_alt_tokens_k=1000), "prompt_alt_tokens_k"),
        (SampleSpec(prompt=PROMPT, top_p=0), "top_p"),
        (SampleSpec(prompt=PROMPT, top_k=0), "top_k"),
        (SampleSpec(prompt=PROMPT, temperature=-1), "temperature"),
        (SampleSpec(prompt=PROMPT, max_tokens=500), "max_model_len"),
    ],
)
def test_bad_requests_are_user_errors(sampler: HFSampler, spec: SampleSpec, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        sampler.sample(None, spec)


def test_prompt_logprobs_are_finite_where_scored(sampler: HFSampler) -> None:
    result = sampler.sample(None, SampleSpec(prompt=PROMPT, max_tokens=1, prompt_logprobs=True))
    assert result.prompt_logprobs is not None
    assert all(v is not None and math.isfinite(v) and v < 0 for v in result.prompt_logprobs[1:])


def test_sample_many_isolates_a_bad_request(tiny_model_dir: Path) -> None:
    from engine.runtime import Engine
    from engine.types import BaseModelSpec, SampleRequest, SampleSpec, UserInputError

    engine = Engine([BaseModelSpec("tiny", str(tiny_model_dir), max_model_len=64)])
    good = SampleRequest("tiny", None, SampleSpec(prompt=[5, 6, 7], max_tokens=4, temperature=0.0))
    bad = SampleRequest("tiny", None, SampleSpec(prompt=[5, 999999], max_tokens=4, temperature=0.0))
    outcomes = engine.sample_many([good, bad, good])
    assert isinstance(outcomes[1], UserInputError)
    assert not isinstance(outcomes[0], Exception) and not isinstance(outcomes[2], Exception)
    assert outcomes[0].sequences[0].tokens == outcomes[2].sequences[0].tokens
    assert len(outcomes[0].sequences[0].tokens) == 4
