"""Issue #3: an end-to-end RL loop through the unmodified SDK.

Each iteration samples a group of completions from the current adapter
(save_weights_and_get_sampling_client), scores them (reward = how often a
chosen token appears), turns rewards into group-relative advantages and trains
on them with the sampler's own logprobs, as RL code written for Tinker does.
The reward must rise, with importance_sampling and with ppo.
"""

from __future__ import annotations

from collections import Counter

import pytest
import tinker
from tinker import types

from tests.conftest import MODEL_NAME, LiveServer

TIMEOUT = 120
PROMPT = [5, 17, 300, 42]
GROUP = 16
MAX_TOKENS = 6
ITERATIONS = 6


def _target_token(sampler: tinker.SamplingClient) -> int:
    """The token the untrained model samples most often after the prompt (still rare: ~1%)."""
    res = sampler.sample(types.ModelInput.from_ints(PROMPT), 64,
                         types.SamplingParams(max_tokens=MAX_TOKENS, seed=1, stop=[])).result(timeout=TIMEOUT)
    counts = Counter(t for seq in res.sequences for t in seq.tokens)
    return counts.most_common(1)[0][0]


def _rollouts(sampler: tinker.SamplingClient, target: int, seed: int) -> tuple[list[types.Datum], float]:
    """One group of samples → training data (group-relative advantages) and the mean reward."""
    res = sampler.sample(types.ModelInput.from_ints(PROMPT), GROUP,
                         types.SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=seed, stop=[])
                         ).result(timeout=TIMEOUT)
    rewards = [seq.tokens.count(target) / len(seq.tokens) for seq in res.sequences]
    mean = sum(rewards) / len(rewards)
    data = []
    for seq, reward in zip(res.sequences, rewards):
        full = PROMPT + seq.tokens
        n_prompt = len(PROMPT) - 1  # positions predicting prompt tokens: no advantage, no gradient
        assert seq.logprobs is not None
        data.append(types.Datum(
            model_input=types.ModelInput.from_ints(full[:-1]),
            loss_fn_inputs={
                "target_tokens": types.TensorData(data=full[1:], dtype="int64", shape=[len(full) - 1]),
                "logprobs": types.TensorData(data=[0.0] * n_prompt + list(seq.logprobs), dtype="float32",
                                             shape=[len(full) - 1]),
                "advantages": types.TensorData(data=[0.0] * n_prompt + [reward - mean] * len(seq.tokens),
                                               dtype="float32", shape=[len(full) - 1]),
            },
        ))
    return data, mean


@pytest.mark.parametrize("loss_fn, config", [
    ("importance_sampling", None),
    ("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
])
def test_rl_loop_raises_the_reward(server: LiveServer, loss_fn: str, config: dict[str, float] | None) -> None:
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    tc = client.create_lora_training_client(base_model=MODEL_NAME, rank=8, seed=0).result(timeout=TIMEOUT)
    target = _target_token(tc.save_weights_and_get_sampling_client().result(timeout=TIMEOUT))
    rewards = []
    for it in range(ITERATIONS):
        sampler = tc.save_weights_and_get_sampling_client().result(timeout=TIMEOUT)
        data, reward = _rollouts(sampler, target, seed=100 + it)
        rewards.append(reward)
        out = tc.forward_backward(data, loss_fn, loss_fn_config=config).result(timeout=TIMEOUT)
        # The sampler's logprobs are the trainer's: the first importance ratio is 1 (KL ~ 0).
        for datum, result in zip(data, out.loss_fn_outputs):
            sampled = datum.loss_fn_inputs["logprobs"].tolist()[len(PROMPT) - 1:]
            trained = result["logprobs"].tolist()[len(PROMPT) - 1:]
            assert trained == pytest.approx(sampled, abs=1e-4)
        tc.optim_step(types.AdamParams(learning_rate=5e-2)).result(timeout=TIMEOUT)
    final_sampler = tc.save_weights_and_get_sampling_client().result(timeout=TIMEOUT)
    _, final = _rollouts(final_sampler, target, seed=99)
    rewards.append(final)
    print(f"{loss_fn}: reward per iteration {[round(r, 3) for r in rewards]}")
    assert final > rewards[0] + 0.3, rewards
    assert max(rewards[-3:]) > max(rewards[:2]), rewards
