"""Issue #3 item 3: every sampling option through the unmodified SDK against a live server.

Every test here runs against both sampling back ends (HF, and vLLM when installed).

Prompt logprobs (whole prompt, last N, top-k, chosen ids), alternative tokens,
compute_logprobs, every SamplingParams field, many samples per request, many
concurrent requests from several clients and tenants, and 429 back-pressure
that the SDK waits out without losing a request.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import tinker
import torch
from tinker import types

from tests.conftest import MODEL_NAME, LiveServer, start_server, write_models_yaml

PROMPT = [5, 17, 300, 42, 99, 7, 250, 13, 64, 31]
TIMEOUT = 120


@pytest.fixture(scope="module")
def alice(any_sampler_server: LiveServer) -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=any_sampler_server.url, api_key=any_sampler_server.keys["alice"])


@pytest.fixture(scope="module")
def base_sampler(alice: tinker.ServiceClient) -> tinker.SamplingClient:
    return alice.create_sampling_client(base_model=MODEL_NAME).result(timeout=TIMEOUT)


def _prompt() -> types.ModelInput:
    return types.ModelInput.from_ints(PROMPT)


def test_prompt_logprobs_topk_and_compute_logprobs(base_sampler: tinker.SamplingClient) -> None:
    res = base_sampler.sample(
        _prompt(), 1, types.SamplingParams(max_tokens=4, seed=0),
        include_prompt_logprobs=True, topk_prompt_logprobs=5, topk_sample_logprobs=3,
    ).result(timeout=TIMEOUT)
    plp = res.prompt_logprobs
    assert plp is not None and len(plp) == len(PROMPT) and plp[0] is None
    assert all(v is not None and v < 0 for v in plp[1:])
    topk = res.topk_prompt_logprobs
    assert topk is not None and topk[0] is None and len(topk) == len(PROMPT)
    for i in range(1, len(PROMPT)):
        row = topk[i]
        assert row is not None and len(row) == 5
        values = [lp for _, lp in row]
        assert values == sorted(values, reverse=True)
        # The actual prompt token is either in the top 5 with the same logprob, or below them.
        if PROMPT[i] in [t for t, _ in row]:
            assert dict(row)[PROMPT[i]] == pytest.approx(plp[i], abs=1e-5)
        else:
            assert plp[i] <= values[-1] + 1e-6
    seq = res.sequences[0]
    assert seq.topk_logprobs is not None and len(seq.topk_logprobs) == len(seq.tokens)
    for tok, lp, row in zip(seq.tokens, seq.logprobs or [], seq.topk_logprobs):
        assert row is not None and len(row) == 3
        assert lp <= row[0][1] + 1e-6
        if tok in dict(row):
            assert dict(row)[tok] == pytest.approx(lp, abs=1e-5)

    # compute_logprobs is the same prefill; last_n leaves the prefix unscored (None).
    logprobs = base_sampler.compute_logprobs(_prompt()).result(timeout=TIMEOUT)
    assert logprobs[0] is None and logprobs[1:] == pytest.approx(plp[1:], abs=1e-5)
    last3 = base_sampler.compute_logprobs(_prompt(), prompt_logprobs_last_n=3).result(timeout=TIMEOUT)
    assert last3[:-3] == [None] * (len(PROMPT) - 3)
    assert last3[-3:] == pytest.approx(plp[-3:], abs=1e-5)
    with pytest.raises(tinker.BadRequestError, match="prompt_logprobs_last_n"):
        base_sampler.compute_logprobs(_prompt(), prompt_logprobs_last_n=len(PROMPT)).result(timeout=TIMEOUT)


def test_target_prompt_logprobs_dense_and_sparse_and_alt_tokens(base_sampler: tinker.SamplingClient) -> None:
    scored = base_sampler.sample(_prompt(), 1, types.SamplingParams(max_tokens=1), include_prompt_logprobs=True,
                                 topk_prompt_logprobs=2).result(timeout=TIMEOUT)
    assert scored.prompt_logprobs is not None and scored.topk_prompt_logprobs is not None
    ids = torch.full((len(PROMPT) - 1, 2), -1, dtype=torch.int64)
    ids[:, 0] = torch.tensor(PROMPT[1:])  # column 0: the actual next prompt token
    best = scored.topk_prompt_logprobs[4]
    assert best is not None
    ids[3, 1] = best[1][0]  # row i scores prompt position i + 1
    for target in (types.TensorData.from_torch(ids), types.TensorData.from_torch_sparse(ids, pad_value=-1)):
        res = base_sampler.sample(_prompt(), 1, types.SamplingParams(max_tokens=1),
                                  target_prompt_logprobs=target).result(timeout=TIMEOUT)
        out = res.target_prompt_logprobs
        assert out is not None and out.shape == [len(PROMPT) - 1, 2]
        assert (out.sparse_crow_indices is None) == (target.sparse_crow_indices is None), "same layout back"
        dense = out.to_torch().to_dense() if out.sparse_crow_indices is not None else out.to_torch()
        assert dense[:, 0].tolist() == pytest.approx(scored.prompt_logprobs[1:], abs=1e-5)
        assert dense[3, 1].item() == pytest.approx(best[1][1], abs=1e-5)
        assert dense[0, 1].item() == 0.0

    alt = base_sampler.sample(_prompt(), 1, types.SamplingParams(max_tokens=1, seed=11),
                              prompt_alt_tokens_k=3).result(timeout=TIMEOUT)
    assert alt.prompt_alt_tokens is not None
    tokens, lps = alt.prompt_alt_tokens.tokens.to_torch(), alt.prompt_alt_tokens.logprobs.to_torch()
    assert tokens.shape == (len(PROMPT) - 1, 3) and lps.shape == (len(PROMPT) - 1, 3)
    assert bool((lps <= 0).all()) and bool((tokens >= 0).all())
    greedy = base_sampler.sample(_prompt(), 1, types.SamplingParams(max_tokens=1, temperature=0),
                                 prompt_alt_tokens_k=2, topk_prompt_logprobs=1).result(timeout=TIMEOUT)
    assert greedy.prompt_alt_tokens is not None and greedy.topk_prompt_logprobs is not None
    argmax = [row[0][0] for row in greedy.topk_prompt_logprobs[1:] if row]
    assert greedy.prompt_alt_tokens.tokens.to_torch()[:, 0].tolist() == argmax


def test_every_sampling_param(base_sampler: tinker.SamplingClient, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompt = _prompt()

    def run(n: int = 1, **params: object) -> types.SampleResponse:
        return base_sampler.sample(prompt, n, types.SamplingParams(**params)).result(timeout=TIMEOUT)

    # temperature 0 is greedy (and so are top_k=1 and a tiny top_p, at any temperature).
    greedy = run(max_tokens=8, temperature=0, stop=[]).sequences[0]
    assert len(greedy.tokens) == 8 and greedy.stop_reason == "length"
    assert run(max_tokens=8, top_k=1, seed=4, stop=[]).sequences[0].tokens == greedy.tokens
    assert run(max_tokens=8, top_p=1e-6, temperature=2.0, seed=5, stop=[]).sequences[0].tokens == greedy.tokens
    # A seed makes sampling reproducible; many samples per request are independent draws.
    a = run(6, max_tokens=8, seed=42, temperature=1.3, stop=[])
    b = run(6, max_tokens=8, seed=42, temperature=1.3, stop=[])
    assert len(a.sequences) == 6 and [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    assert len({tuple(s.tokens) for s in a.sequences}) > 1
    assert len({s.sequence_id for s in a.sequences}) == 6 and all(s.sequence_id for s in a.sequences)
    for s in a.sequences:
        assert s.logprobs is not None and len(s.logprobs) == len(s.tokens) == 8
        assert all(math.isfinite(lp) and lp <= 0 for lp in s.logprobs)
    # top_k: every sampled token is among the k most likely of its position.
    k = run(3, max_tokens=6, top_k=2, seed=9, temperature=3.0, stop=[])
    for s in k.sequences:
        full = base_sampler.sample(types.ModelInput.from_ints(PROMPT + s.tokens), 1,
                                   types.SamplingParams(max_tokens=1), topk_prompt_logprobs=2).result(timeout=TIMEOUT)
        rows = full.topk_prompt_logprobs
        assert rows is not None
        for i, tok in enumerate(s.tokens):
            row = rows[len(PROMPT) + i]
            assert row is not None and tok in [t for t, _ in row]
    # stop: token ids end generation at (and include) the stop token.
    stop_tok = greedy.tokens[2]
    by_id = run(max_tokens=8, temperature=0, stop=[stop_tok]).sequences[0]
    assert by_id.stop_reason == "stop" and by_id.tokens == greedy.tokens[: greedy.tokens.index(stop_tok) + 1]
    # stop: a string ends generation once the decoded text contains it; its tokens are returned.
    text = tokenizer.decode(greedy.tokens[:3])
    needle = text[-2:] if len(text) >= 2 else text
    by_str = run(max_tokens=8, temperature=0, stop=[needle]).sequences[0]
    assert by_str.stop_reason == "stop" and needle in tokenizer.decode(by_str.tokens)
    assert by_str.tokens == greedy.tokens[: len(by_str.tokens)]
    assert run(max_tokens=8, temperature=0, stop=needle).sequences[0].tokens == by_str.tokens
    # max_tokens omitted: the server picks a bounded default.
    default = run(seed=1, stop=[]).sequences[0]
    assert 1 <= len(default.tokens) <= 256 - len(PROMPT)
    # Bad parameters are clear 400s.
    with pytest.raises(tinker.BadRequestError, match="top_p"):
        run(max_tokens=2, top_p=0.0)
    with pytest.raises(tinker.BadRequestError, match="max_model_len"):
        run(max_tokens=1000)


def test_many_concurrent_requests_from_several_clients_and_tenants(any_sampler_server: LiveServer) -> None:
    server = any_sampler_server
    clients = [tinker.ServiceClient(base_url=server.url, api_key=server.keys[name])
               for name in ("alice", "alice", "bob")]
    samplers = [c.create_sampling_client(base_model=MODEL_NAME).result(timeout=TIMEOUT) for c in clients]
    params = [types.SamplingParams(max_tokens=6, seed=100 + i, temperature=1.0, stop=[]) for i in range(8)]
    pending: list[tuple[int, int, Future]] = []
    for s_index, sampler in enumerate(samplers):
        for i, p in enumerate(params):
            pending.append((s_index, i, sampler.sample(_prompt(), 3, p)))
    results = {(s, i): f.result(timeout=TIMEOUT) for s, i, f in pending}
    assert len(results) == 24
    for (s, i), res in results.items():
        assert len(res.sequences) == 3 and all(len(q.tokens) == 6 for q in res.sequences)
        # Same seed, same tokens, whichever client or tenant asked and in whatever order it ran.
        assert [q.tokens for q in res.sequences] == [q.tokens for q in results[(0, i)].sequences]


def test_overloaded_server_answers_429_and_the_sdk_waits_it_out(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> None:
    home = tmp_path_factory.mktemp("tuft-overload")
    # The first sample stalls in the lane until released (TUFT_FAILPOINT), so the others queue
    # up behind it whatever the machine's speed: the cap of 2 pending requests is reached for sure.
    stall = home / "stall-first-sample"
    srv = start_server(home, write_models_yaml(home / "models.yaml", tiny_model_dir),
                       extra_env={"TUFT_MAX_PENDING_SAMPLES": "2", "TUFT_FAILPOINT": f"sample:{stall}"})
    try:
        key = srv.create_tenant("carol")
        sampler = tinker.ServiceClient(base_url=srv.url, api_key=key).create_sampling_client(base_model=MODEL_NAME).result(timeout=TIMEOUT)
        futures = [sampler.sample(_prompt(), 4, types.SamplingParams(max_tokens=40, seed=i, stop=[]))
                   for i in range(6)]
        deadline = time.monotonic() + TIMEOUT
        while "answering 429" not in srv.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        Path(f"{stall}.release").touch()
        results = [f.result(timeout=TIMEOUT) for f in futures]
        # Nothing was dropped: every request came back whole...
        assert all(len(r.sequences) == 4 and all(len(s.tokens) == 40 for s in r.sequences) for r in results)
        # ...although the server pushed back (the SDK resubmitted after each 429).
        assert "Too Many Requests: /api/v1/asample" in srv.log()
        assert "answering 429" in srv.log()
    finally:
        srv.stop()
