"""Issue #2: training really learns, and the trainer and sampler agree (on both sampling back ends)."""

from __future__ import annotations

import tinker
from tinker import types

from tests.api.helpers import completion_datum, datum
from tests.conftest import MODEL_NAME, LiveServer

PROMPT = [101, 42, 37, 102]
TARGET = [99, 73, 55, 12, 400, 7]


def test_training_lowers_loss_and_sampler_reproduces_target(any_sampler_server: LiveServer) -> None:
    server = any_sampler_server
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=8, seed=0).result(timeout=60)
    batch = [completion_datum(PROMPT, TARGET)]
    losses = []
    for _ in range(20):
        fb = training.forward_backward(batch, "cross_entropy")
        training.optim_step(types.AdamParams(learning_rate=2e-2))
        losses.append(fb.result(timeout=60).metrics["loss:sum"])
    assert losses[-1] < losses[0] / 2, losses

    greedy = types.SamplingParams(max_tokens=len(TARGET), temperature=0.0, stop=[])
    prompt = types.ModelInput.from_ints(PROMPT)
    trained = training.save_weights_and_get_sampling_client("learned").result(timeout=60)
    sample = trained.sample(prompt=prompt, num_samples=1, sampling_params=greedy).result(timeout=60)
    assert list(sample.sequences[0].tokens) == TARGET

    saved = training.save_weights_for_sampler("learned-named").result(timeout=60)
    from_path = client.create_sampling_client(model_path=saved.path).result(timeout=60)
    again = from_path.sample(prompt=prompt, num_samples=2, sampling_params=greedy).result(timeout=60)
    assert [list(s.tokens) for s in again.sequences] == [TARGET, TARGET]

    base = client.create_sampling_client(base_model=MODEL_NAME).result(timeout=60)
    base_sample = base.sample(prompt=prompt, num_samples=1, sampling_params=greedy).result(timeout=60)
    assert list(base_sample.sequences[0].tokens) != TARGET


def test_sampler_logprobs_equal_trainer_logprobs(any_sampler_server: LiveServer) -> None:
    """RL code compares sampler and trainer logprobs; they must agree (tolerance 1e-4 nats, fp32)."""
    server = any_sampler_server
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=8, seed=3).result(timeout=60)
    for _ in range(3):
        training.forward_backward([completion_datum(PROMPT, TARGET)], "cross_entropy")
        training.optim_step(types.AdamParams(learning_rate=1e-2))
    sampler = training.save_weights_and_get_sampling_client("consistency").result(timeout=60)
    params = types.SamplingParams(max_tokens=8, temperature=1.0, seed=11, stop=[])
    sample = sampler.sample(prompt=types.ModelInput.from_ints(PROMPT), num_samples=3,
                            sampling_params=params).result(timeout=60)
    for seq in sample.sequences:
        full = PROMPT + list(seq.tokens)
        forward = training.forward([datum(full[:-1], full[1:])], "cross_entropy").result(timeout=60)
        trainer_lps = forward.loss_fn_outputs[0]["logprobs"].tolist()[len(PROMPT) - 1:]
        assert len(trainer_lps) == len(seq.logprobs)
        assert max(abs(a - b) for a, b in zip(trainer_lps, seq.logprobs)) < 1e-4

    # Same seed, same tokens.
    again = sampler.sample(prompt=types.ModelInput.from_ints(PROMPT), num_samples=3,
                           sampling_params=params).result(timeout=60)
    assert [list(s.tokens) for s in again.sequences] == [list(s.tokens) for s in sample.sequences]


def test_reloaded_checkpoint_gives_same_logprobs(server: LiveServer) -> None:
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=4, seed=5).result(timeout=60)
    batch = [completion_datum(PROMPT, TARGET)]
    for _ in range(3):
        training.forward_backward(batch, "cross_entropy")
        training.optim_step(types.AdamParams(learning_rate=1e-2))
    before = training.forward(batch, "cross_entropy").result(timeout=60)
    state = training.save_state("reload-me").result(timeout=60)
    restored = client.create_training_client_from_state(state.path).result(timeout=60)
    after = restored.forward(batch, "cross_entropy").result(timeout=60)
    a = before.loss_fn_outputs[0]["logprobs"].tolist()
    b = after.loss_fn_outputs[0]["logprobs"].tolist()
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
