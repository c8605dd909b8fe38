"""Every built-in loss against a float64 reference written straight from its formula.

The reference below is numpy over plain float64 arrays: values from the
formulas in docs/losses.md and gradients d loss / d lp derived by hand, so it
shares no code (and no autograd) with engine/losses.py. We check the registry's
functions on float64 tensors, then the whole engine path: a float64 copy of the
tiny model, whose adapter gradients must equal the reference gradient pushed
back through the same model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine import losses
from engine.model_host import ModelHost
from engine.training import TrainingEngine
from engine.types import AdamSpec, BaseModelSpec, Datum, ForwardBackwardSpec, LoraSpec, Tensor, UserInputError

TOL = 1e-6
RL_LOSSES = ["importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce"]


# -- the float64 reference -------------------------------------------------------------


def reference(name: str, lp: np.ndarray, w: np.ndarray, config: dict[str, float],
              q: np.ndarray | None = None, adv: np.ndarray | None = None,
              seq_mask: np.ndarray | None = None, lo_tok: np.ndarray | None = None,
              hi_tok: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """(loss, d loss / d lp) for ``[B, T]`` arrays; ``w`` is 0 on padding.

    ``lo_tok``/``hi_tok``: per-token thresholds, NaN where the config applies.
    """
    if name == "cross_entropy":
        return float(np.sum(-w * lp)), -w
    assert q is not None and adv is not None
    r = np.exp(np.where(w != 0, lp - q, 0.0))
    policy = (w != 0) & (adv != 0)

    def thresholds(lo_default: float, hi_default: float) -> tuple[np.ndarray, np.ndarray]:
        lo = np.full_like(lp, lo_default) if lo_tok is None else np.where(np.isnan(lo_tok), lo_default, lo_tok)
        hi = np.full_like(lp, hi_default) if hi_tok is None else np.where(np.isnan(hi_tok), hi_default, hi_tok)
        return lo, hi

    if name == "importance_sampling":
        return float(np.sum(-w * r * adv)), -w * r * adv
    if name in ("ppo", "gspo"):
        if name == "ppo":
            lo, hi = thresholds(config.get("clip_low_threshold", 0.8), config.get("clip_high_threshold", 1.2))
            ratio = r
        else:
            lo, hi = thresholds(config.get("clip_low_threshold", 1 - 3e-4), config.get("clip_high_threshold", 1 + 4e-4))
            ratio = np.zeros_like(lp)
            for b in range(lp.shape[0]):
                in_ratio = policy[b] if seq_mask is None else np.where(
                    np.isnan(seq_mask[b]), policy[b], (seq_mask[b] != 0) & (w[b] != 0))
                n = int(in_ratio.sum())
                ratio[b] = math.exp(float(np.sum((lp[b] - q[b])[in_ratio])) / n) if n else 1.0
        unclipped, clipped = ratio * adv, np.clip(ratio, lo, hi) * adv
        loss = float(np.sum(-w * np.minimum(unclipped, clipped)))
        # The unclipped branch is the one that depends on lp (d ratio / d lp = ratio, also for
        # GSPO-token's s_t); where the clipped branch is strictly smaller the gradient is 0.
        return loss, np.where(unclipped <= clipped, -w * ratio * adv, 0.0)
    if name == "cispo":
        lo, hi = thresholds(config.get("clip_low_threshold", 0.0), config.get("clip_high_threshold", 4.0))
        c = np.clip(r, lo, hi)
        return float(np.sum(-w * c * adv * lp)), -w * c * adv
    if name == "dro":
        beta = config.get("beta", 0.1)
        d = lp - q
        return float(np.sum(-w * (lp * adv - 0.5 * beta * d * d))), -w * (adv - beta * d)
    if name == "stable_reinforce":
        kl, cap_default = config.get("kl_coeff", 0.0), config.get("clip_high_threshold", 2.0)
        cap = np.full_like(lp, cap_default) if hi_tok is None else np.where(np.isnan(hi_tok), cap_default, hi_tok)
        c = np.minimum(r, cap)
        d = np.where(policy, lp - q, 0.0)
        loss = float(np.sum(w * (-c * adv * lp + 0.5 * kl * d * d)))
        return loss, w * (-c * adv + kl * d)
    raise AssertionError(name)


# -- direct calls of the registry on float64 tensors -------------------------------------


def f32(a: np.ndarray) -> np.ndarray:
    """Client inputs travel as float32: the reference must see the same rounded values."""
    return a.astype(np.float32).astype(np.float64)


def make_batch(seed: int = 0, B: int = 3, T: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = [T, T - 2, T - 1]
    real = np.zeros((B, T))
    for b, n in enumerate(lengths):
        real[b, :n] = 1.0
    lp = np.log(rng.uniform(0.05, 0.95, (B, T)))
    # Ratios between ~0.6 and ~1.6, so PPO's 0.8/1.2 clips some tokens and not others.
    q = f32(lp + rng.uniform(-0.5, 0.5, (B, T))) * real
    adv = f32(rng.normal(size=(B, T)))
    adv[0, 0] = adv[1, 0] = 0.0  # "prompt" tokens: advantage 0, out of ratios and diagnostics
    q[0, 0] = q[1, 0] = 0.0
    weights = f32(rng.uniform(0.2, 1.5, (B, T)))
    weights[2, 1] = 0.0
    return {"lp": lp, "q": q * real, "adv": adv * real, "weights": weights * real, "real": real}


def call(name: str, data: dict[str, np.ndarray], config: dict[str, Any] | None = None,
         extra: dict[str, np.ndarray] | None = None, with_weights: bool = True) -> tuple[losses.LossOutput, torch.Tensor]:
    lp = torch.tensor(data["lp"], dtype=torch.float64, requires_grad=True)
    inputs: dict[str, torch.Tensor] = {}
    if with_weights:
        inputs["weights"] = torch.tensor(data["weights"], dtype=torch.float32)
    if name != "cross_entropy":
        inputs["logprobs"] = torch.tensor(data["q"], dtype=torch.float32)
        inputs["advantages"] = torch.tensor(data["adv"], dtype=torch.float32)
    for key, value in (extra or {}).items():
        inputs[key] = torch.tensor(value, dtype=torch.float32)
    mask = torch.tensor(data["real"], dtype=torch.float32)
    out = losses.get_loss(name)(losses.LossInputs(lp, mask, inputs, dict(config or {})))
    out.loss.backward()
    assert lp.grad is not None
    return out, lp.grad


CASES: list[tuple[str, dict[str, float]]] = [
    ("cross_entropy", {}),
    ("importance_sampling", {}),
    ("ppo", {}),
    ("ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
    ("cispo", {}),
    ("cispo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
    ("dro", {}),
    ("dro", {"beta": 0.05}),
    ("gspo", {}),
    ("gspo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.05}),
    ("stable_reinforce", {}),
    ("stable_reinforce", {"kl_coeff": 0.3, "clip_high_threshold": 1.3}),
]


@pytest.mark.parametrize(("name", "config"), CASES, ids=[f"{n}-{sorted(c)}" for n, c in CASES])
def test_value_and_gradient_match_float64_reference(name: str, config: dict[str, float]) -> None:
    data = make_batch()
    out, grad = call(name, data, config)
    want, want_grad = reference(name, data["lp"], data["weights"], config, data["q"], data["adv"])
    assert abs(float(out.loss.detach()) - want) <= TOL
    assert np.max(np.abs(grad.numpy() - want_grad)) <= TOL
    # Per-token losses add up to the loss and are 0 on padding.
    assert abs(float(out.elementwise.sum()) - want) <= TOL
    assert float(out.elementwise.detach()[data["real"] == 0].abs().sum()) == 0.0
    for key, value in out.metrics.items():
        assert key.count(":") == 1 and math.isfinite(value), (key, value)


def test_clipping_cases_really_clip() -> None:
    """Guard the test data: the PPO/CISPO cases exercise both sides of the clip."""
    data = make_batch()
    out, grad = call("ppo", data)
    assert 0.0 < out.metrics["clip_fraction:mean"] < 1.0
    _, want_grad = reference("ppo", data["lp"], data["weights"], {}, data["q"], data["adv"])
    active = data["weights"] != 0
    assert (want_grad[active] == 0).any() and (want_grad[active] != 0).any()


def test_weights_default_to_one_on_real_tokens() -> None:
    data = make_batch(seed=1)
    for name in ["cross_entropy", *RL_LOSSES]:
        out, grad = call(name, data, with_weights=False)
        want, want_grad = reference(name, data["lp"], data["real"], {}, data["q"], data["adv"])
        assert abs(float(out.loss.detach()) - want) <= TOL, name
        assert np.max(np.abs(grad.numpy() - want_grad)) <= TOL, name


def test_rl_metrics_are_over_policy_tokens() -> None:
    data = make_batch(seed=2)
    out, _ = call("ppo", data)
    policy = (data["weights"] != 0) & (data["adv"] != 0)
    r = np.exp(data["lp"] - data["q"])[policy]
    assert abs(out.metrics["ratio:mean"] - r.mean()) <= TOL
    assert abs(out.metrics["kl:mean"] - np.mean(r - 1 - np.log(r))) <= TOL
    assert abs(out.metrics["clip_fraction:mean"] - np.mean((r < 0.8) | (r > 1.2))) <= TOL


def test_per_token_thresholds_override_config_where_given() -> None:
    data = make_batch(seed=3)
    lo = np.full_like(data["lp"], np.nan)
    hi = np.full_like(data["lp"], np.nan)
    lo[0], hi[0] = 0.95, 1.05  # datum 0 sends its own thresholds; the others use the config
    config = {"clip_low_threshold": 0.7, "clip_high_threshold": 1.3}
    for name in ["ppo", "cispo", "gspo"]:
        out, grad = call(name, data, config, extra={"clip_low_threshold": lo, "clip_high_threshold": hi})
        want, want_grad = reference(name, data["lp"], data["weights"], config, data["q"], data["adv"],
                                    lo_tok=lo, hi_tok=hi)
        assert abs(float(out.loss.detach()) - want) <= TOL, name
        assert np.max(np.abs(grad.numpy() - want_grad)) <= TOL, name
    out, grad = call("stable_reinforce", data, {"kl_coeff": 0.1}, extra={"clip_high_threshold": hi})
    want, want_grad = reference("stable_reinforce", data["lp"], data["weights"], {"kl_coeff": 0.1},
                                data["q"], data["adv"], hi_tok=hi)
    assert abs(float(out.loss.detach()) - want) <= TOL
    assert np.max(np.abs(grad.numpy() - want_grad)) <= TOL


def test_gspo_sequence_ratio_mask() -> None:
    data = make_batch(seed=4)
    seq_mask = np.ones_like(data["lp"]) * data["real"]
    seq_mask[0, :2] = 0.0
    seq_mask[2] = np.nan  # datum 2 did not send one: its policy tokens define the ratio
    config = {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}
    out, grad = call("gspo", data, config, extra={"sequence_ratio_mask": seq_mask})
    want, want_grad = reference("gspo", data["lp"], data["weights"], config, data["q"], data["adv"],
                                seq_mask=seq_mask)
    assert abs(float(out.loss.detach()) - want) <= TOL
    assert np.max(np.abs(grad.numpy() - want_grad)) <= TOL


def test_masked_tokens_with_absurd_sampler_logprobs_stay_finite() -> None:
    """A zero-weight token's exp(lp - q) must not overflow into a NaN gradient."""
    data = make_batch(seed=5)
    data["q"][2, 1] = -1e4  # weight 0 there
    for name in RL_LOSSES:
        out, grad = call(name, data)
        assert math.isfinite(float(out.loss.detach())) and bool(torch.isfinite(grad).all()), name
        want, want_grad = reference(name, data["lp"], data["weights"], {}, data["q"], data["adv"])
        assert np.max(np.abs(grad.numpy() - want_grad)) <= TOL, name


def test_non_finite_loss_is_a_user_error_before_backward() -> None:
    data = make_batch(seed=6)
    data["adv"][0, 2] = np.nan
    with pytest.raises(UserInputError, match="not finite"):
        call("importance_sampling", data)
    data = make_batch(seed=6)
    data["q"][0, 2] = -1e4  # a weighted token: exp(lp - q) overflows
    with pytest.raises(UserInputError, match="not finite"):
        call("importance_sampling", data)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "config", "extra", "match"), [
    ("ppo", {"clip_epsilon": 0.2}, None, "not used by loss 'ppo'"),
    ("cross_entropy", {"beta": 0.1}, None, "accepts no keys"),
    ("dro", {"beta": "big"}, None, "must be a finite number"),
    ("dro", {"beta": float("nan")}, None, "must be a finite number"),
    ("dro", {"beta": -1.0}, None, "beta"),
    ("ppo", {"clip_low_threshold": 1.3, "clip_high_threshold": 1.2}, None, "clip_low_threshold <= clip_high"),
    ("cispo", {"clip_low_threshold": -0.1}, None, "0 <= clip_low_threshold"),
    ("stable_reinforce", {"kl_coeff": -0.5}, None, "kl_coeff"),
    ("stable_reinforce", {"clip_low_threshold": 0.5}, None, "not used by loss 'stable_reinforce'"),
    ("importance_sampling", {}, {"sequence_ratio_mask": np.ones((3, 6))}, "does not use loss_fn_inputs"),
])
def test_bad_config_or_inputs_are_user_errors(name: str, config: dict[str, Any],
                                              extra: dict[str, np.ndarray] | None, match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        call(name, make_batch(), config, extra)


def test_cross_entropy_rejects_rl_inputs() -> None:
    lp = torch.zeros(1, 3, dtype=torch.float64)
    x = losses.LossInputs(lp, torch.ones(1, 3), {"advantages": torch.ones(1, 3)}, {})
    with pytest.raises(UserInputError, match="does not use loss_fn_inputs \\['advantages'\\]"):
        losses.get_loss("cross_entropy")(x)


@pytest.mark.parametrize("name", RL_LOSSES)
def test_missing_rl_inputs_are_user_errors(name: str) -> None:
    lp = torch.zeros(1, 3, dtype=torch.float64)
    x = losses.LossInputs(lp, torch.ones(1, 3), {"advantages": torch.ones(1, 3)}, {})
    with pytest.raises(UserInputError, match="needs loss_fn_inputs \\['logprobs'\\]"):
        losses.get_loss(name)(x)


def test_unknown_and_custom_loss_names() -> None:
    with pytest.raises(UserInputError, match="unknown loss function 'nope'"):
        losses.get_loss("nope")
    with pytest.raises(UserInputError, match="forward_backward_custom"):
        losses.get_loss("custom")


def test_every_sdk_loss_name_is_handled() -> None:
    from typing import get_args

    from tinker.types import LossFnType

    assert set(get_args(LossFnType)) == set(losses.LOSSES) | {"custom"}


# -- through the engine: a float64 tiny model ------------------------------------------------


@pytest.fixture(scope="module")
def engine64(tiny_model_dir: Path) -> TrainingEngine:
    """A float64 copy of the tiny model with one run whose adapter is not at its zero init
    (LoRA B starts at 0, which would leave every A gradient 0)."""
    host = ModelHost(BaseModelSpec(model_name="tiny", model_path=str(tiny_model_dir), max_model_len=64),
                     device=torch.device("cpu"))
    engine = TrainingEngine({"tiny": host})
    engine.create_run("r", "tiny", LoraSpec(rank=4, seed=0))
    assert host.peft is not None
    host.peft.double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in engine.runs["r"].params:
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return engine


SEQS = [[5, 17, 33, 2, 9, 41, 7], [12, 3, 3, 88], [60, 61, 62, 63, 64]]


def _tensor(values: np.ndarray | list[float], dtype: str = "float32") -> Tensor:
    values = list(np.asarray(values).reshape(-1).tolist())
    return Tensor(data=values, shape=[len(values)], dtype=dtype)


def _model_logprobs(engine: TrainingEngine) -> tuple[torch.Tensor, list[torch.nn.Parameter], np.ndarray]:
    """lp [B, T] in float64 through the run's adapter (differentiable), its params, the real mask."""
    run = engine.runs["r"]
    T = max(len(s) for s in SEQS) - 1
    ids = torch.zeros(len(SEQS), T, dtype=torch.long)
    att = torch.zeros(len(SEQS), T, dtype=torch.long)
    tgt = torch.zeros(len(SEQS), T, dtype=torch.long)
    for b, s in enumerate(SEQS):
        ids[b, : len(s) - 1] = torch.tensor(s[:-1])
        tgt[b, : len(s) - 1] = torch.tensor(s[1:])
        att[b, : len(s) - 1] = 1
    with run.host.use(run.adapter) as model:
        logits = model(input_ids=ids, attention_mask=att).logits
    assert logits.dtype == torch.float64
    lp = torch.log_softmax(logits, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return lp, run.params, att.numpy().astype(np.float64)


@pytest.mark.parametrize(("name", "config"), CASES, ids=[f"{n}-{sorted(c)}" for n, c in CASES])
def test_engine_adapter_gradients_match_reference(engine64: TrainingEngine, name: str,
                                                  config: dict[str, float]) -> None:
    run = engine64.runs["r"]
    lp, params, real = _model_logprobs(engine64)
    lp_np = lp.detach().numpy()
    rng = np.random.default_rng(7)
    q = f32(lp_np + rng.uniform(-0.4, 0.4, lp_np.shape)) * real
    adv = f32(rng.normal(size=lp_np.shape)) * real
    adv[:, 0] = 0.0
    weights = f32(rng.uniform(0.5, 1.5, lp_np.shape)) * real
    data = []
    for b, s in enumerate(SEQS):
        n = len(s) - 1
        inputs = {"target_tokens": _tensor(s[1:], "int64"), "weights": _tensor(weights[b, :n])}
        if name != "cross_entropy":
            inputs["logprobs"] = _tensor(q[b, :n])
            inputs["advantages"] = _tensor(adv[b, :n])
        data.append(Datum(tokens=s[:-1], loss_fn_inputs=inputs))

    run.optimizer.zero_grad(set_to_none=True)
    result = engine64.forward_backward([ForwardBackwardSpec("r", data, name, dict(config))])[0]
    got = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    run.optimizer.zero_grad(set_to_none=True)

    want, want_dlp = reference(name, lp_np, weights, config, q, adv)
    want_grads = torch.autograd.grad(lp, params, grad_outputs=torch.tensor(want_dlp))
    assert abs(result.metrics["loss:sum"] - want) <= TOL
    assert max(float((g - w).abs().max()) for g, w in zip(got, want_grads)) <= TOL
    assert any(float(w.abs().max()) > 1e-4 for w in want_grads)  # a real, non-trivial gradient
    for b, s in enumerate(SEQS):
        out = result.outputs[b]
        assert out["logprobs"].shape == [len(s) - 1]
        assert np.max(np.abs(np.array(out["logprobs"].data) - lp_np[b, : len(s) - 1])) <= TOL


def test_forward_only_returns_logprobs_and_changes_nothing(engine64: TrainingEngine) -> None:
    run = engine64.runs["r"]
    data = [Datum(tokens=s[:-1], loss_fn_inputs={"target_tokens": _tensor(s[1:], "int64")}) for s in SEQS]
    # Give the optimizer some state first, so "unchanged" means something.
    run.optimizer.zero_grad(set_to_none=True)
    engine64.forward_backward([ForwardBackwardSpec("r", data, "cross_entropy")])
    engine64.optim_step("r", AdamSpec(learning_rate=1e-3))
    weights_before = [p.detach().clone() for p in run.params]
    state_before = {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in s.items()}
                    for k, s in run.optimizer.state_dict()["state"].items()}
    assert state_before
    step_before = run.step

    lp, _, real = _model_logprobs(engine64)
    result = engine64.forward_backward([ForwardBackwardSpec("r", data, "cross_entropy", forward_only=True)])[0]
    for b, s in enumerate(SEQS):
        got = np.array(result.outputs[b]["logprobs"].data)
        assert got.shape == (len(s) - 1,)
        assert np.max(np.abs(got - lp.detach().numpy()[b, : len(s) - 1])) <= TOL
    assert abs(result.metrics["loss:sum"] - float(np.sum(-lp.detach().numpy() * real))) <= TOL
    assert all(p.grad is None for p in run.params)
    assert all(torch.equal(a, b) for a, b in zip(weights_before, run.params))
    state_after = run.optimizer.state_dict()["state"]
    for k, s in state_before.items():
        for n, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(state_after[k][n]))
    assert run.step == step_before


def test_engine_rejects_missing_inputs_and_bad_config_without_touching_grads(engine64: TrainingEngine) -> None:
    run = engine64.runs["r"]
    run.optimizer.zero_grad(set_to_none=True)
    s = SEQS[0]
    no_adv = [Datum(tokens=s[:-1], loss_fn_inputs={"target_tokens": _tensor(s[1:], "int64"),
                                                   "logprobs": _tensor([-1.0] * (len(s) - 1))})]
    with pytest.raises(UserInputError, match="missing loss_fn_inputs\\['advantages'\\]"):
        engine64.forward_backward([ForwardBackwardSpec("r", no_adv, "ppo")])
    full = [Datum(tokens=s[:-1], loss_fn_inputs={"target_tokens": _tensor(s[1:], "int64"),
                                                 "logprobs": _tensor([-1.0] * (len(s) - 1)),
                                                 "advantages": _tensor([1.0] * (len(s) - 1))})]
    with pytest.raises(UserInputError, match="not used by loss 'ppo'"):
        engine64.forward_backward([ForwardBackwardSpec("r", full, "ppo", {"eps": 0.2})])
    with pytest.raises(UserInputError, match="forward_backward_custom"):
        engine64.forward_backward([ForwardBackwardSpec("r", full, "custom", {"loss_id": "x"})])
    assert all(p.grad is None for p in run.params)


def test_engine_mixed_per_token_thresholds(engine64: TrainingEngine) -> None:
    """One datum sends clip thresholds, the other relies on loss_fn_config."""
    run = engine64.runs["r"]
    lp, params, real = _model_logprobs(engine64)
    lp_np = lp.detach().numpy()
    rng = np.random.default_rng(11)
    q = f32(lp_np + rng.uniform(-0.4, 0.4, lp_np.shape)) * real
    adv = f32(rng.normal(size=lp_np.shape)) * real
    lo = np.full_like(lp_np, np.nan)
    hi = np.full_like(lp_np, np.nan)
    data = []
    for b, s in enumerate(SEQS):
        n = len(s) - 1
        inputs = {"target_tokens": _tensor(s[1:], "int64"), "logprobs": _tensor(q[b, :n]),
                  "advantages": _tensor(adv[b, :n])}
        if b == 0:
            lo[b, :n], hi[b, :n] = 0.95, 1.05
            inputs["clip_low_threshold"] = _tensor(lo[b, :n])
            inputs["clip_high_threshold"] = _tensor(hi[b, :n])
        data.append(Datum(tokens=s[:-1], loss_fn_inputs=inputs))
    config = {"clip_low_threshold": 0.7, "clip_high_threshold": 1.3}
    run.optimizer.zero_grad(set_to_none=True)
    result = engine64.forward_backward([ForwardBackwardSpec("r", data, "ppo", config)])[0]
    got = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    run.optimizer.zero_grad(set_to_none=True)
    want, want_dlp = reference("ppo", lp_np, real, config, q, adv, lo_tok=lo, hi_tok=hi)
    want_grads = torch.autograd.grad(lp, params, grad_outputs=torch.tensor(want_dlp))
    assert abs(result.metrics["loss:sum"] - want) <= TOL
    assert max(float((g - w).abs().max()) for g, w in zip(got, want_grads)) <= TOL
