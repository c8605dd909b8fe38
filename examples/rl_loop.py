"""Reinforcement learning against a local TuFT, the shape of tinker-cookbook's ``rl_loop``.

Each iteration: save the current weights for sampling, sample a group of
completions per prompt, score them with a reward function, turn rewards into
group-relative advantages and train on them with the ``importance_sampling``
loss and the sampler's own logprobs. Offline, on the built-in model.

    python examples/rl_loop.py [--iterations 8] [--base-url URL] [--api-key tml-...]

The built-in model has random weights and knows no task, so the reward here is
mechanical: how often the completion contains one chosen token (the one the
untrained model samples most). It rises from ~0.02 to 1.0 within about 4
iterations; a task reward (maths, format) would barely move on a random model.
"""

from __future__ import annotations

import argparse
from collections import Counter

from tinker import types

from _connect import add_connection_args, connect

PROMPT = "The model learns"
GROUP = 16
MAX_TOKENS = 6


def rollouts(sampler, prompt: list[int], reward_fn, seed: int) -> tuple[list[types.Datum], float]:  # type: ignore[no-untyped-def]
    """One group of samples -> training data with group-relative advantages, and the mean reward."""
    result = sampler.sample(
        prompt=types.ModelInput.from_ints(prompt), num_samples=GROUP,
        sampling_params=types.SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=seed, stop=[]),
    ).result()
    rewards = [reward_fn(seq.tokens) for seq in result.sequences]
    mean = sum(rewards) / len(rewards)
    data = []
    for seq, reward in zip(result.sequences, rewards):
        tokens = prompt + list(seq.tokens)
        n, n_prompt = len(tokens) - 1, len(prompt) - 1  # prompt positions get no advantage
        data.append(types.Datum(
            model_input=types.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": types.TensorData(data=tokens[1:], dtype="int64", shape=[n]),
                "logprobs": types.TensorData(data=[0.0] * n_prompt + list(seq.logprobs), dtype="float32",
                                             shape=[n]),
                "advantages": types.TensorData(data=[0.0] * n_prompt + [reward - mean] * len(seq.tokens),
                                               dtype="float32", shape=[n]),
            },
        ))
    return data, mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_connection_args(parser)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-2)
    args = parser.parse_args()

    service, base_model = connect(args)
    training = service.create_lora_training_client(base_model=base_model, rank=8, seed=0).result()
    tokenizer = training.get_tokenizer()
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False)

    first = training.save_weights_and_get_sampling_client().result()
    probe = first.sample(prompt=types.ModelInput.from_ints(prompt), num_samples=64,
                         sampling_params=types.SamplingParams(max_tokens=MAX_TOKENS, seed=1, stop=[])).result()
    target = Counter(t for seq in probe.sequences for t in seq.tokens).most_common(1)[0][0]
    print(f"reward: share of completion tokens equal to {tokenizer.decode([target])!r} (id {target})")

    def reward_fn(tokens: list[int]) -> float:
        return tokens.count(target) / max(1, len(tokens))

    rewards = []
    for iteration in range(args.iterations):
        sampler = training.save_weights_and_get_sampling_client().result()
        data, reward = rollouts(sampler, prompt, reward_fn, seed=100 + iteration)
        rewards.append(reward)
        print(f"iteration {iteration:2d}  mean reward {reward:.3f}", flush=True)
        training.forward_backward(data, "importance_sampling").result()
        training.optim_step(types.AdamParams(learning_rate=args.learning_rate)).result()
    _, final = rollouts(training.save_weights_and_get_sampling_client().result(), prompt, reward_fn, seed=99)
    print(f"first reward {rewards[0]:.3f}, final reward {final:.3f}")


if __name__ == "__main__":
    main()
