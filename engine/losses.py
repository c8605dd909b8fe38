"""Loss functions selected by name in forward_backward.

Each loss takes the target-token logprobs of the current model plus the
per-token inputs the client sent (already padded into ``[B, T]`` tensors, with
``mask`` marking real positions) and returns the scalar loss to minimise and
the per-token loss. Losses are sums over tokens and data, as in Tinker: the
client chooses the normalisation through its weights or advantages.
docs/losses.md gives every formula, input and default.

Conventions shared by every loss (per token t; B = batch, T = positions, and
an optional trailing K for 2-D ``target_tokens``):

* ``lp``   the model's logprob of ``target_tokens`` (the tensor we differentiate);
* ``q``    ``loss_fn_inputs["logprobs"]``, the sampler's logprob of the same token;
* ``A``    ``loss_fn_inputs["advantages"]``;
* ``w``    ``loss_fn_inputs["weights"]`` (default 1), always times the padding mask;
* ``r``    the importance ratio ``exp(lp - q)``.

Losses are dtype-agnostic: they compute in ``lp``'s dtype, so tests can run
them in float64 against a reference.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from engine.types import EngineError, UserInputError

logger = logging.getLogger(__name__)


@dataclass
class LossInputs:
    logprobs: torch.Tensor  # [B, T] (or [B, T, K]) logprobs of target_tokens under the model
    mask: torch.Tensor  # [B, T] 1.0 on real positions, 0.0 on padding
    inputs: dict[str, torch.Tensor]  # padded client inputs, each [B, T] (or [B, T, K])
    config: dict[str, float | str]


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar
    elementwise: torch.Tensor  # [B, T] (or [B, T, K])
    # Keys are "name:reduction" with exactly one colon (the SDK splits on it).
    metrics: dict[str, float]


LossFn = Callable[[LossInputs], LossOutput]
# A loss body receives the inputs and its validated config (every key present).
LossBody = Callable[[LossInputs, dict[str, float]], LossOutput]


@dataclass(frozen=True)
class LossDef:
    name: str
    body: LossBody
    required: tuple[str, ...]  # loss_fn_inputs besides target_tokens
    optional: tuple[str, ...]
    defaults: dict[str, float] = field(default_factory=dict)  # the loss_fn_config keys it accepts

    def __call__(self, x: LossInputs) -> LossOutput:
        missing = [n for n in self.required if n not in x.inputs]
        if missing:
            raise UserInputError(f"loss {self.name!r} needs loss_fn_inputs {missing}")
        unknown = sorted(set(x.inputs) - set(self.required) - set(self.optional))
        if unknown:
            # Silently ignoring an input (say, advantages sent to cross_entropy) would
            # train something other than what the client meant.
            accepted = ["target_tokens", *self.required, *self.optional]
            raise UserInputError(
                f"loss {self.name!r} does not use loss_fn_inputs {unknown}; it accepts {accepted}"
            )
        out = self.body(x, _parse_config(self, x.config))
        bad = [k for k in out.metrics if k.count(":") != 1]
        assert not bad, f"metric keys must be 'name:reduction': {bad}"
        if not bool(torch.isfinite(out.loss.detach())):
            # Failing here, before backward, keeps inf/NaN out of the run's gradients:
            # one poisoned optim_step would ruin the adapter for good.
            real = _expand(x.mask, x.logprobs) != 0
            if not bool(torch.isfinite(x.logprobs.detach()[real]).all()):
                raise EngineError("the model produced non-finite logprobs")
            raise UserInputError(
                f"loss {self.name!r} is not finite ({float(out.loss.detach())}); check the inputs "
                "(NaN/inf values, or sampler logprobs so far below the model's that exp(lp - q) overflows)"
            )
        return out


# Inputs each loss requires besides target_tokens; "weights" defaults to 1.
REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {}
LOSSES: dict[str, LossDef] = {}

# What a datum that lacks an input gets on its real positions when another datum
# of the same request has it (padding positions are always 0). NaN means "use
# the loss_fn_config value / the default" for per-token overrides.
MISSING_INPUT_FILL: dict[str, float] = {
    "weights": 1.0,
    "clip_low_threshold": math.nan,
    "clip_high_threshold": math.nan,
    "sequence_ratio_mask": math.nan,
}

_RL_INPUTS = ("logprobs", "advantages")


def register(
    name: str,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = ("weights",),
    defaults: dict[str, float] | None = None,
) -> Callable[[LossBody], LossBody]:
    def deco(body: LossBody) -> LossBody:
        LOSSES[name] = LossDef(name, body, required, optional, dict(defaults or {}))
        REQUIRED_INPUTS[name] = required
        return body

    return deco


def get_loss(name: str) -> LossFn:
    if name == "custom":
        raise UserInputError(
            "loss_fn 'custom' (server-side custom losses from create_custom_loss) is disabled on "
            "this server (custom_loss_server_side is false in /client/config); compute the loss on "
            "the client with TrainingClient.forward_backward_custom(data, loss_fn) instead"
        )
    if name not in LOSSES:
        raise UserInputError(f"unknown loss function {name!r}; supported: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def _parse_config(defn: LossDef, config: dict[str, float | str]) -> dict[str, float]:
    unknown = sorted(set(config) - set(defn.defaults))
    if unknown:
        accepted = ", ".join(sorted(defn.defaults)) or "no keys"
        raise UserInputError(
            f"loss_fn_config key(s) {unknown} are not used by loss {defn.name!r} (it accepts {accepted})"
        )
    out = dict(defn.defaults)
    for key, value in config.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserInputError(f"loss_fn_config[{key!r}] must be a finite number, got {value!r}")
        out[key] = float(value)
    return out


# -- shared pieces ---------------------------------------------------------------


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` mask broadcast to ``like``'s ``[B, T, ...]`` shape."""
    return mask.view(*mask.shape, *([1] * (like.dim() - mask.dim()))).expand_as(like)


def _weights(x: LossInputs) -> torch.Tensor:
    mask = _expand(x.mask, x.logprobs).to(x.logprobs.dtype)
    weights = x.inputs.get("weights")
    if weights is None:
        return mask
    return weights.to(x.logprobs.dtype) * mask


def _mean(values: torch.Tensor, where: torch.Tensor) -> float:
    """Mean of ``values`` over the ``where`` positions (0.0 when there are none)."""
    n = int(where.sum())
    return float(values.detach().double()[where].sum() / n) if n else 0.0


@dataclass
class _Policy:
    """What the policy-gradient losses share, for one batch."""

    lp: torch.Tensor  # model logprobs (differentiable)
    q: torch.Tensor  # sampler logprobs
    adv: torch.Tensor
    w: torch.Tensor  # weights x padding mask
    log_ratio: torch.Tensor  # lp - q on weighted tokens, 0 elsewhere
    # Tokens the policy-gradient term acts on: weighted and with a non-zero
    # advantage. RL clients (tinker-cookbook) put advantage 0 and a placeholder
    # sampler logprob of 0 on prompt tokens, so those must stay out of ratios,
    # KL penalties and diagnostics.
    policy: torch.Tensor  # bool

    @staticmethod
    def of(x: LossInputs) -> "_Policy":
        dtype = x.logprobs.dtype
        q = x.inputs["logprobs"].to(dtype)
        adv = x.inputs["advantages"].to(dtype)
        w = _weights(x)
        active = w != 0
        # NOTE: padding and zero-weight tokens get log-ratio 0 so an absurd q there
        # cannot overflow exp() and turn a masked 0 into NaN (0 * inf) in backward.
        log_ratio = torch.where(active, x.logprobs - q, torch.zeros_like(q))
        return _Policy(x.logprobs, q, adv, w, log_ratio, active & (adv != 0))

    @property
    def ratio(self) -> torch.Tensor:
        return torch.exp(self.log_ratio)

    def metrics(self, clipped: torch.Tensor | None = None) -> dict[str, float]:
        # NOTE: diagnostics in float64 with the log-ratio capped, so an extreme
        # ratio reports a huge finite number rather than inf (metrics are JSON).
        lr = self.log_ratio.detach().double().clamp(max=700.0)
        r = torch.exp(lr)
        out = {
            "ratio:mean": _mean(r, self.policy),
            # k3 estimate of KL(sampler || model) from sampler tokens: r - 1 - log r >= 0.
            "kl:mean": _mean(r - 1.0 - lr, self.policy),
        }
        if clipped is not None:
            out["clip_fraction:mean"] = _mean(clipped.double(), self.policy)
        return out


def _thresholds(x: LossInputs, config: dict[str, float], low: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clip thresholds: loss_fn_inputs override loss_fn_config where given."""
    like = x.logprobs.detach()
    out = []
    for key in ("clip_low_threshold", "clip_high_threshold"):
        value = torch.full_like(like, config.get(key, 0.0))
        given = x.inputs.get(key)
        if given is not None:
            given = given.to(like.dtype)
            value = torch.where(torch.isnan(given), value, given)
        out.append(value)
    lo, hi = out
    real = _expand(x.mask, like) != 0
    if not bool(torch.isfinite(lo[real]).all() and torch.isfinite(hi[real]).all()):
        raise UserInputError("clip thresholds must be finite")
    if low and not bool((lo[real] >= 0).all() and (lo[real] <= hi[real]).all()):
        raise UserInputError("clip thresholds must satisfy 0 <= clip_low_threshold <= clip_high_threshold")
    if not low and not bool((hi[real] >= 0).all()):
        raise UserInputError("clip_high_threshold must be >= 0")
    return lo, hi


def _clipped_surrogate(p: _Policy, ratio: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> LossOutput:
    """-w * min(ratio * A, clip(ratio, lo, hi) * A), the PPO objective (also GSPO's)."""
    clipped_ratio = torch.minimum(torch.maximum(ratio, lo), hi)
    objective = torch.minimum(ratio * p.adv, clipped_ratio * p.adv)
    elementwise = -p.w * objective
    outside = (ratio.detach() < lo) | (ratio.detach() > hi)
    return LossOutput(elementwise.sum(), elementwise, p.metrics(outside))


# -- the losses --------------------------------------------------------------------


@register("cross_entropy")
def cross_entropy(x: LossInputs, config: dict[str, float]) -> LossOutput:
    """loss = sum_t -w_t * lp_t  (weights default to 1 on real tokens)."""
    elementwise = -_weights(x) * x.logprobs
    return LossOutput(elementwise.sum(), elementwise, {})


@register("importance_sampling", required=_RL_INPUTS)
def importance_sampling(x: LossInputs, config: dict[str, float]) -> LossOutput:
    """loss = sum_t -w_t * r_t * A_t  (REINFORCE with an importance-sampling correction)."""
    p = _Policy.of(x)
    elementwise = -p.w * p.ratio * p.adv
    return LossOutput(elementwise.sum(), elementwise, p.metrics())


@register(
    "ppo", required=_RL_INPUTS, optional=("weights", "clip_low_threshold", "clip_high_threshold"),
    defaults={"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
)
def ppo(x: LossInputs, config: dict[str, float]) -> LossOutput:
    """loss = sum_t -w_t * min(r_t A_t, clip(r_t, lo, hi) A_t)  (token-level PPO clip)."""
    p = _Policy.of(x)
    lo, hi = _thresholds(x, config)
    return _clipped_surrogate(p, p.ratio, lo, hi)


@register(
    "cispo", required=_RL_INPUTS, optional=("weights", "clip_low_threshold", "clip_high_threshold"),
    # One-sided by default (lower bound off), as Tinker's docs and ScaleRL do.
    defaults={"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
)
def cispo(x: LossInputs, config: dict[str, float]) -> LossOutput:
    """loss = sum_t -w_t * sg(clip(r_t, lo, hi)) * A_t * lp_t.

    The clipped ratio is a constant coefficient, so clipping bounds a token's
    update instead of zeroing it (MiniMax-M1).
    """
    p = _Policy.of(x)
    lo, hi = _thresholds(x, config)
    ratio = p.ratio.detach()
    coefficient = torch.minimum(torch.maximum(ratio, lo), hi)
    elementwise = -p.w * coefficient * p.adv * p.lp
    return LossOutput(elementwise.sum(), elementwise, p.metrics((ratio < lo) | (ratio > hi)))


@register("dro", required=_RL_INPUTS, defaults={"beta": 0.1})
def dro(x: LossInputs, config: dict[str, float]) -> LossOutput:
    """loss = sum_t -w_t * (lp_t A_t - beta/2 * (lp_t - q_t)^2)  (Tinker's published DRO)."""
    beta = config["beta"]
    if beta < 0:
        raise UserInputError(f"loss_fn_config['beta'] must be >= 0, got {beta}")
    p = _Policy.of(x)
    elementwise = -p.w * (p.lp * p.adv - 0.5 * beta * p.log_ratio.square())
    return LossOutput(elementwise.sum(), elementwise, p.metrics())


@register(
    "gspo", required=_RL_INPUTS,
    optional=("weights", "clip_low_threshold", "clip_high_threshold", "sequence_ratio_mask"),
    # The GSPO paper's clip range (3e-4, 4e-4): a length-normalised sequence
    # ratio moves far less than token ratios, so PPO's 0.2 would never clip.
    defaults={"clip_low_threshold": 1.0 - 3e-4, "clip_high_threshold": 1.0 + 4e-4},
)
def gspo(x: LossInputs, config: dict[str, float]) -> LossOutput:
    """GSPO-token: every token carries its datum's sequence ratio with its own gradient.

    s_b = exp(mean_{t in M_b} (sg(lp_t) - q_t)), s_t = s_b * exp(lp_t - sg(lp_t)),
    loss = sum_t -w_t * min(s_t A_t, clip(s_t, lo, hi) A_t).
    M_b: the tokens ``sequence_ratio_mask`` marks (non-zero), else the policy tokens.
    """
    p = _Policy.of(x)
    lo, hi = _thresholds(x, config)
    in_ratio = p.policy
    given = x.inputs.get("sequence_ratio_mask")
    if given is not None:
        real = _expand(x.mask, p.lp) != 0
        in_ratio = torch.where(torch.isnan(given), p.policy, (given != 0) & real)
    dims = tuple(range(1, p.lp.dim()))
    lp_sg = p.lp.detach()
    token_log_ratio = torch.where(in_ratio, lp_sg - p.q, torch.zeros_like(lp_sg))
    count = in_ratio.sum(dim=dims, keepdim=True).clamp(min=1).to(lp_sg.dtype)
    seq_log_ratio = token_log_ratio.sum(dim=dims, keepdim=True) / count
    ratio = torch.exp(seq_log_ratio + p.lp - lp_sg)
    return _clipped_surrogate(p, ratio, lo, hi)


@register(
    "stable_reinforce", required=_RL_INPUTS, optional=("weights", "clip_high_threshold"),
    defaults={"kl_coeff": 0.0, "clip_high_threshold": 2.0},
)
def stable_reinforce(x: LossInputs, config: dict[str, float]) -> LossOutput:
    """Truncated-importance-weight REINFORCE with a KL penalty towards the sampler.

    loss = sum_t w_t * ( -sg(min(r_t, c)) * A_t * lp_t + kl_coeff * P_t * (lp_t - q_t)^2 / 2 )
    with P_t = 1 on policy tokens (weight and advantage non-zero).

    NOTE: Tinker's StableReinforce (alpha) also uses stability information its
    sampler records (``record_stability_info``); that objective is unpublished and
    this server records none, so this is a documented standard stand-in: a
    truncated IS weight (c = 2, as in TIS) keeps stale or numerically mismatched
    samples from blowing up the update, and the k2 penalty pulls the trainer
    back towards the sampler.
    """
    kl_coeff = config["kl_coeff"]
    if kl_coeff < 0:
        raise UserInputError(f"loss_fn_config['kl_coeff'] must be >= 0, got {kl_coeff}")
    p = _Policy.of(x)
    _, cap = _thresholds(x, config, low=False)
    ratio = p.ratio.detach()
    coefficient = torch.minimum(ratio, cap)
    penalty = 0.5 * kl_coeff * p.policy.to(p.lp.dtype) * p.log_ratio.square()
    elementwise = p.w * (-coefficient * p.adv * p.lp + penalty)
    return LossOutput(elementwise.sum(), elementwise, p.metrics(ratio > cap))
