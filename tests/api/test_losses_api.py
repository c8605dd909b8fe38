"""The built-in losses, forward and forward_backward_custom through the unmodified SDK.

Values are checked against the formulas in docs/losses.md, computed here from
the logprobs the server returns (float32 over the wire, hence 1e-4).
"""

from __future__ import annotations

import math

import pytest
import tinker
import torch
from tinker import types

from tests.api.helpers import completion_datum
from tests.conftest import MODEL_NAME, LiveServer

PROMPT = [101, 42, 37, 102]
COMPLETION = [99, 73, 55, 12, 400]


def _training(server: LiveServer, seed: int = 0) -> tinker.TrainingClient:
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    return client.create_lora_training_client(base_model=MODEL_NAME, rank=4, seed=seed).result(timeout=60)


def _rl_datum(tokens: list[int], targets: list[int], sampler_logprobs: list[float],
              advantages: list[float]) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens),
        loss_fn_inputs={
            "target_tokens": types.TensorData(data=targets, dtype="int64", shape=[len(targets)]),
            "logprobs": types.TensorData(data=sampler_logprobs, dtype="float32", shape=[len(targets)]),
            "advantages": types.TensorData(data=advantages, dtype="float32", shape=[len(targets)]),
        },
    )


def _logprobs(result: types.ForwardBackwardOutput, i: int = 0) -> list[float]:
    return result.loss_fn_outputs[i]["logprobs"].tolist()


def test_forward_returns_logprobs_and_leaves_weights_unchanged(server: LiveServer) -> None:
    training = _training(server)
    batch = [completion_datum(PROMPT, COMPLETION)]
    first = training.forward(batch, "cross_entropy").result(timeout=60)
    lp = _logprobs(first)
    weights = batch[0].loss_fn_inputs["weights"].tolist()
    assert len(lp) == len(PROMPT) + len(COMPLETION) - 1 and all(v < 0 for v in lp)
    assert abs(first.metrics["loss:sum"] + sum(w * v for w, v in zip(weights, lp))) < 1e-4
    assert len(first.loss_fn_outputs[0]["elementwise_loss"].tolist()) == len(lp)

    # Forwards must not leave gradients behind: an optim_step after them changes nothing.
    training.forward(batch, "cross_entropy").result(timeout=60)
    training.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=60)
    again = training.forward(batch, "cross_entropy").result(timeout=60)
    assert again.metrics["loss:sum"] == pytest.approx(first.metrics["loss:sum"], abs=1e-6)
    assert _logprobs(again) == pytest.approx(lp, abs=1e-6)


def test_importance_sampling_and_ppo_over_http(server: LiveServer) -> None:
    training = _training(server, seed=1)
    full = PROMPT + COMPLETION
    tokens, targets = full[:-1], full[1:]
    n_prompt = len(PROMPT) - 1
    current = _logprobs(training.forward(
        [completion_datum(PROMPT, COMPLETION)], "cross_entropy").result(timeout=60))
    # A sampler that was a little off: ratios between ~0.7 and ~1.4; the prompt carries
    # advantage 0 and a placeholder sampler logprob of 0, as tinker-cookbook sends it.
    shifts = [0.35, -0.3, 0.05, -0.15, 0.25]
    sampler = [0.0] * n_prompt + [v + s for v, s in zip(current[n_prompt:], shifts)]
    advantages = [0.0] * n_prompt + [1.0, -0.5, 2.0, 1.0, -1.0]
    datum = _rl_datum(tokens, targets, sampler, advantages)
    ratios = [math.exp(lp - q) for lp, q in zip(current, sampler)]

    result = training.forward_backward([datum], "importance_sampling").result(timeout=60)
    lp = _logprobs(result)
    assert lp == pytest.approx(current, abs=1e-5)
    assert result.metrics["loss:sum"] == pytest.approx(-sum(r * a for r, a in zip(ratios, advantages)), abs=1e-4)
    policy = [r for r, a in zip(ratios, advantages) if a != 0]
    assert result.metrics["ratio:mean"] == pytest.approx(sum(policy) / len(policy), abs=1e-4)
    elementwise = result.loss_fn_outputs[0]["elementwise_loss"].tolist()
    assert elementwise[:n_prompt] == [0.0] * n_prompt

    def ppo_loss(lo: float, hi: float) -> float:
        return -sum(min(r * a, min(max(r, lo), hi) * a) for r, a in zip(ratios, advantages))

    for config, (lo, hi) in [(None, (0.8, 1.2)),
                             ({"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}, (0.9, 1.1))]:
        ppo = training.forward_backward([datum], "ppo", config).result(timeout=60)
        assert ppo.metrics["loss:sum"] == pytest.approx(ppo_loss(lo, hi), abs=1e-4)
        clipped = [r < lo or r > hi for r, a in zip(ratios, advantages) if a != 0]
        assert ppo.metrics["clip_fraction:mean"] == pytest.approx(sum(clipped) / len(clipped), abs=1e-6)
    assert ppo_loss(0.8, 1.2) != pytest.approx(ppo_loss(0.9, 1.1), abs=1e-3)  # the config mattered

    # A config key the loss does not have is a user error, and the run carries on.
    bad = training.forward_backward([datum], "ppo", {"clip_epsilon": 0.2})
    with pytest.raises(tinker.RequestFailedError) as info:
        bad.result(timeout=60)
    assert info.value.category == "user" and "not used by loss 'ppo'" in str(info.value)

    # Policy-gradient training moves logprobs the way the advantages say (the first
    # optim_step applies and clears the gradients accumulated above).
    training.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=60)
    before = _logprobs(training.forward([datum], "importance_sampling").result(timeout=60))
    for _ in range(3):  # small steps: a first-order move, not an overshoot through shared weights
        training.forward_backward([datum], "importance_sampling")
        training.optim_step(types.AdamParams(learning_rate=1e-3))
    after = _logprobs(training.forward([datum], "importance_sampling").result(timeout=60))
    up = [i for i, a in enumerate(advantages) if a > 0]
    down = [i for i, a in enumerate(advantages) if a < 0]
    assert sum(after[i] - before[i] for i in up) > 0 > sum(after[i] - before[i] for i in down)


def test_forward_backward_custom_dpo_loss_decreases(server: LiveServer) -> None:
    training = _training(server, seed=2)
    pairs = [([101, 42, 37], [99, 73, 55]), ([101, 8, 9], [400, 12, 7])]
    rejected_completions = [[5, 6, 7], [300, 301, 302]]
    data: list[types.Datum] = []
    for (prompt, chosen), rejected in zip(pairs, rejected_completions):
        data += [completion_datum(prompt, chosen), completion_datum(prompt, rejected)]
    masks = [torch.tensor(d.loss_fn_inputs["weights"].tolist()) for d in data]
    reference = [torch.tensor(_logprobs(training.forward(data, "cross_entropy").result(timeout=60), i))
                 for i in range(len(data))]
    beta = 0.5

    def dpo_loss(batch: list[types.Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        assert len(batch) == len(logprobs) == len(data)
        margins = []
        for i in range(0, len(batch), 2):
            chosen = ((logprobs[i] - reference[i]) * masks[i]).sum()
            rejected = ((logprobs[i + 1] - reference[i + 1]) * masks[i + 1]).sum()
            margins.append(beta * (chosen - rejected))
        loss = -torch.nn.functional.logsigmoid(torch.stack(margins)).sum()
        return loss, {"dpo_margin:mean": float(torch.stack(margins).detach().mean())}

    history = []
    for _ in range(4):
        result = training.forward_backward_custom(data, dpo_loss).result(timeout=120)
        training.optim_step(types.AdamParams(learning_rate=2e-2)).result(timeout=60)
        history.append(result.metrics["loss:sum"])
        assert "surrogate_loss:sum" in result.metrics and "dpo_margin:mean" in result.metrics
    assert history[0] == pytest.approx(2 * math.log(2), abs=1e-4)  # policy == reference at the start
    assert history[-1] < history[0] - 0.05, history
    assert all(b < a for a, b in zip(history, history[1:])), history


def test_unknown_or_custom_loss_fails_the_future_and_the_run_keeps_working(server: LiveServer) -> None:
    training = _training(server, seed=3)
    batch = [completion_datum(PROMPT, COMPLETION)]
    first = training.forward_backward(batch, "cross_entropy").result(timeout=60).metrics["loss:sum"]
    for name, match in [("no_such_loss", "unknown loss function 'no_such_loss'"),
                        ("custom", "forward_backward_custom")]:
        with pytest.raises(tinker.RequestFailedError) as info:
            training.forward_backward(batch, name).result(timeout=60)  # type: ignore[arg-type]
        assert info.value.category == "user" and match in str(info.value)
    # The failures accumulated nothing: one step now follows the first call's gradient only.
    again = training.forward(batch, "cross_entropy").result(timeout=60).metrics["loss:sum"]
    assert again == pytest.approx(first, abs=1e-5)
    training.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=60)
    after = training.forward(batch, "cross_entropy").result(timeout=60).metrics["loss:sum"]
    assert after < first
