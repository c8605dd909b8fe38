"""Cross-run batching: forward_backward_many equals running the requests one at a time.

Two engines load the same tiny fp32 model and create the same runs (same
seeds, so the same initial adapters). The reference engine runs every request
alone (``forward_backward([spec])``, one pass each); the batched engine gets
them all in one ``forward_backward_many`` call. Outputs, loss metrics,
gradients, and weights after AdamW steps must agree to 1e-5 in float32
(relative to the magnitude of the value or tensor when it is above 1, e.g. a
loss summed over many tokens), and to 1e-12 in float64 over several steps,
which shows that the float32 differences are rounding (rows padded to another
length, matrices of another size) and not leakage between rows.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from engine import training
from engine.batching import split_by_token_budget
from engine.runtime import Engine
from engine.types import (
    AdamSpec,
    BaseModelSpec,
    Datum,
    EngineError,
    ForwardBackwardResult,
    ForwardBackwardSpec,
    LoraSpec,
    Tensor,
    UserInputError,
)

MODEL = "tiny"
TOL = 1e-5  # float32; float64 tests use 1e-12
ADAM = AdamSpec(learning_rate=2e-2, weight_decay=0.01)

# (rank, train_attn, train_mlp, train_unembed), one per run: ranks and target sets differ.
SHAPES = [(2, True, True, True), (4, True, False, True), (8, False, True, False), (16, True, True, False),
          (4, False, True, True), (2, True, False, False), (16, False, False, True), (8, True, True, True)]
LOSSES = ["cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce",
          "cross_entropy"]


def _engine(model_dir: Path, **kwargs: int) -> Engine:
    return Engine([BaseModelSpec(MODEL, str(model_dir), max_model_len=128)], **kwargs)


@pytest.fixture
def pair(tiny_model_dir: Path) -> tuple[Engine, Engine]:
    """(reference, batched): two engines on the same base weights."""
    return _engine(tiny_model_dir), _engine(tiny_model_dir)


def _create(engines: tuple[Engine, ...], n_runs: int) -> list[str]:
    runs = []
    for i in range(n_runs):
        rank, attn, mlp, unembed = SHAPES[i]
        lora = LoraSpec(rank=rank, seed=i, train_attn=attn, train_mlp=mlp, train_unembed=unembed)
        for engine in engines:
            engine.create_run(f"run{i}", MODEL, lora)
        runs.append(f"run{i}")
    return runs


def _floats(values: list[float]) -> Tensor:
    return Tensor(data=values, shape=[len(values)], dtype="float32")


def _spec(ref: Engine, run: str, loss: str, lengths: list[int], seed: int,
          forward_only: bool = False) -> ForwardBackwardSpec:
    """A request of ``len(lengths)`` data; RL inputs are near the model's own logprobs.

    The sampler logprobs ``q`` come from a forward-only pass of the reference
    engine plus noise, so importance ratios stay in a realistic range.
    """
    rng = random.Random(seed)
    seqs = [[rng.randrange(2, 1000) for _ in range(n + 1)] for n in lengths]
    data = [Datum(tokens=s[:-1], loss_fn_inputs={"target_tokens": Tensor(s[1:], [len(s) - 1], "int64")})
            for s in seqs]
    if loss == "cross_entropy":
        weighted = [Datum(d.tokens, {**d.loss_fn_inputs,
                                     "weights": _floats([rng.uniform(0.5, 1.5) for _ in d.tokens])})
                    for d in data]
        return ForwardBackwardSpec(run, weighted, loss, forward_only=forward_only)
    probe = ref.forward_backward([ForwardBackwardSpec(run, data, "cross_entropy", forward_only=True)])[0]
    rl = []
    for d, out in zip(data, probe.outputs):
        q = [lp + rng.uniform(-0.3, 0.3) for lp in out["logprobs"].data]
        adv = [0.0] + [rng.gauss(0.0, 1.0) for _ in d.tokens[1:]]  # prompt-like first token
        rl.append(Datum(d.tokens, {**d.loss_fn_inputs, "logprobs": _floats(q), "advantages": _floats(adv)}))
    config = {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1} if loss == "ppo" else {}
    return ForwardBackwardSpec(run, rl, loss, config, forward_only=forward_only)


def _close(got: float, want: float, tol: float = TOL) -> bool:
    return abs(got - want) <= tol * max(1.0, abs(want))


def _assert_same_result(got: ForwardBackwardResult | EngineError, want: ForwardBackwardResult,
                        tol: float = TOL) -> None:
    assert isinstance(got, ForwardBackwardResult), got
    assert set(got.metrics) == set(want.metrics)
    for key, value in want.metrics.items():
        assert _close(got.metrics[key], value, tol), (key, got.metrics[key], value)
    assert len(got.outputs) == len(want.outputs)
    for g, w in zip(got.outputs, want.outputs):
        for name in ("logprobs", "elementwise_loss"):
            assert g[name].shape == w[name].shape
            diff = max((abs(a - b) / max(1.0, abs(b)) for a, b in zip(g[name].data, w[name].data)), default=0.0)
            assert diff <= tol, (name, diff)


def _params(engine: Engine, run: str) -> dict[str, torch.nn.Parameter]:
    state = engine.training.runs[run]
    return state.host.adapter_parameters(state.adapter)


def _assert_tensor_close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    """Max difference within ``tol`` times the tensor's scale (its max magnitude, at least 1)."""
    scale = max(1.0, float(want.detach().abs().max()))
    diff = float((got.detach() - want.detach()).abs().max())
    assert diff <= tol * scale, (what, diff, scale)


def _assert_same_grads(got: Engine, want: Engine, run: str, tol: float = TOL) -> None:
    mine, theirs = _params(got, run), _params(want, run)
    assert mine.keys() == theirs.keys()
    for name, p in theirs.items():
        q = mine[name]
        if p.grad is None:
            assert q.grad is None, name
        else:
            assert q.grad is not None, name
            _assert_tensor_close(q.grad, p.grad, tol, name)


def _assert_same_weights(got: Engine, want: Engine, run: str, tol: float = TOL) -> None:
    mine, theirs = _params(got, run), _params(want, run)
    for name, p in theirs.items():
        _assert_tensor_close(mine[name], p, tol, name)


def _copy_grads(dst: Engine, src: Engine, run: str) -> None:
    """Give ``dst``'s run exactly ``src``'s (already compared) gradients.

    NOTE(batch): in float32 AdamW amplifies rounding: a component whose true
    gradient is near zero gets an update of about +-lr whatever its size (m/sqrt(v)
    is its sign on early steps), so gradients equal to 1e-5 still give weights
    that differ by ~1e-2 after a step (measured: 7e-3 at lr 2e-2, even with eps
    1e-6). The float32 test therefore steps both engines on the same gradients
    (checking that the run's optimizer state and weights match); the float64
    test runs the whole chain, AdamW included, to 1e-12 without this.
    """
    with torch.no_grad():
        mine = _params(dst, run)
        for name, p in _params(src, run).items():
            mine[name].grad = None if p.grad is None else p.grad.clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_runs", [1, 2, 8])
def test_batched_pass_equals_one_at_a_time(pair: tuple[Engine, Engine], n_runs: int, dtype: torch.dtype) -> None:
    ref, batched = pair
    runs = _create(pair, n_runs)
    tol = TOL
    if dtype == torch.float64:
        tol = 1e-12
        for engine in pair:
            engine.host(MODEL).peft.double()  # type: ignore[union-attr]
    for step in range(3):  # step 0 starts at B = 0 (A gets no gradient); later steps train everything
        specs = [_spec(ref, run, LOSSES[i], lengths=[5 + 7 * i, 3 + (i * 5 + step) % 11], seed=100 * step + i)
                 for i, run in enumerate(runs)]
        want = [ref.forward_backward([spec])[0] for spec in specs]
        got = batched.forward_backward_many(specs)
        for g, w in zip(got, want):
            _assert_same_result(g, w, tol)
        for run in runs:
            _assert_same_grads(batched, ref, run, tol)
            if dtype == torch.float32:
                _copy_grads(batched, ref, run)
            for engine in pair:
                engine.optim_step(run, ADAM)
            _assert_same_weights(batched, ref, run, tol)
    # The runs really trained, and differently: every adapter moved away from its start.
    assert all(any(float(p.detach().abs().max()) > 0 for n, p in _params(batched, r).items() if "lora_B" in n)
               for r in runs)


@pytest.mark.parametrize("n_runs", [2, 8])
def test_whole_model_pass_equals_one_at_a_time(pair: tuple[Engine, Engine], n_runs: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Models other than Qwen and Llama take the plain pass (all logits at once): same results."""
    monkeypatch.setattr(training, "_plain_unembedding", lambda causal_lm: False)
    ref, batched = pair
    runs = _create(pair, n_runs)
    for step in range(2):
        specs = [_spec(ref, run, LOSSES[i], lengths=[4 + 5 * i, 9], seed=10 * step + i)
                 for i, run in enumerate(runs)]
        want = [ref.forward_backward([spec])[0] for spec in specs]
        got = batched.forward_backward_many(specs)
        for g, w in zip(got, want):
            _assert_same_result(g, w)
        for run in runs:
            _assert_same_grads(batched, ref, run)
            _copy_grads(batched, ref, run)
            for engine in pair:
                engine.optim_step(run, ADAM)


def test_one_request_logits_at_a_time(pair: tuple[Engine, Engine]) -> None:
    """The batched pass makes each request's logits alone (a lone pass's size), never all rows' at once."""
    _, batched = pair
    runs = _create((batched,), 8)
    shapes: list[tuple[int, ...]] = []
    host = batched.host(MODEL)
    vocab = host.vocab_size
    lm_head = host.base.get_output_embeddings()
    lm_head = getattr(lm_head, "base_layer", lm_head)  # the frozen matmul, under peft's LoRA wrapper
    handle = lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    try:
        specs = [_spec(batched, run, "cross_entropy", [16, 7], seed=i) for i, run in enumerate(runs)]
        outcomes = batched.forward_backward_many(specs)
    finally:
        handle.remove()
    assert all(isinstance(o, ForwardBackwardResult) for o in outcomes)
    assert shapes == [(2, 16, vocab)] * 8


def test_one_pass_for_all_runs(pair: tuple[Engine, Engine]) -> None:
    """Eight runs' requests run as one forward of the base model, not eight."""
    _, batched = pair
    runs = _create((batched,), 8)
    calls: list[int] = []
    host = batched.host(MODEL)
    handle = host.base.model.register_forward_hook(lambda module, args, out: calls.append(1))
    try:
        specs = [_spec(batched, run, "cross_entropy", [16], seed=i) for i, run in enumerate(runs)]
        outcomes = batched.forward_backward_many(specs)
    finally:
        handle.remove()
    assert all(isinstance(o, ForwardBackwardResult) for o in outcomes)
    assert len(calls) == 1


def test_same_run_twice_accumulates_like_two_calls(pair: tuple[Engine, Engine]) -> None:
    ref, batched = pair
    _create(pair, 2)
    for engine in pair:  # move B off zero so every parameter gets a gradient
        engine.forward_backward([_spec(ref, "run0", "cross_entropy", [9], seed=0)])
        engine.optim_step("run0", ADAM)
    first = _spec(ref, "run0", "cross_entropy", [6, 11], seed=1)
    other = _spec(ref, "run1", "ppo", [7], seed=2)
    second = _spec(ref, "run0", "importance_sampling", [4], seed=3)
    want = [ref.forward_backward([s])[0] for s in (first, other, second)]
    got = batched.forward_backward_many([first, other, second])
    for g, w in zip(got, want):
        _assert_same_result(g, w)
    _assert_same_grads(batched, ref, "run0")
    _assert_same_grads(batched, ref, "run1")
    assert all(p.grad is not None and float(p.grad.abs().max()) > 0 for p in _params(batched, "run0").values())


def test_bad_requests_beside_good_ones(pair: tuple[Engine, Engine]) -> None:
    ref, batched = pair
    _create(pair, 3)
    good0 = _spec(ref, "run0", "cross_entropy", [8], seed=0)
    good2 = _spec(ref, "run2", "cross_entropy", [5, 6], seed=2)
    bad_token = ForwardBackwardSpec("run1", [Datum([5, 6], {"target_tokens": Tensor([6, 99999], [2], "int64")})],
                                    "cross_entropy")
    unknown_run = ForwardBackwardSpec("nope", good0.data, "cross_entropy")
    unknown_loss = ForwardBackwardSpec("run1", good0.data, "no_such_loss")
    # Passes validation but fails inside the loss, after the forward pass of the batch.
    rl = _spec(ref, "run1", "ppo", [6], seed=4)
    bad_config = ForwardBackwardSpec("run1", rl.data, "ppo", {"clip_low_threshold": 2.0, "clip_high_threshold": 1.0})
    specs = [bad_token, good0, unknown_run, unknown_loss, bad_config, good2]
    want = {1: ref.forward_backward([good0])[0], 5: ref.forward_backward([good2])[0]}
    got = batched.forward_backward_many(specs)
    assert len(got) == len(specs)
    assert isinstance(got[0], UserInputError) and "vocabulary" in str(got[0])
    assert isinstance(got[2], EngineError) and not got[2].user
    assert isinstance(got[3], UserInputError) and "no_such_loss" in str(got[3])
    assert isinstance(got[4], UserInputError) and "clip" in str(got[4])
    for i, w in want.items():
        _assert_same_result(got[i], w)
    _assert_same_grads(batched, ref, "run0")
    _assert_same_grads(batched, ref, "run2")
    # run1's requests all failed: no gradient at all (not even zeros, which AdamW would step on).
    assert all(p.grad is None for p in _params(batched, "run1").values())


def test_forward_only_beside_forward_backward(pair: tuple[Engine, Engine]) -> None:
    ref, batched = pair
    _create(pair, 3)
    for engine in pair:
        for run in ("run0", "run1", "run2"):
            engine.forward_backward([_spec(ref, run, "cross_entropy", [10], seed=9)])
            engine.optim_step(run, ADAM)
    only_forward = _spec(ref, "run0", "cross_entropy", [12], seed=1, forward_only=True)
    trains = _spec(ref, "run1", "dro", [5, 9], seed=2)
    mixed_fwd = _spec(ref, "run2", "importance_sampling", [7], seed=3, forward_only=True)
    mixed_train = _spec(ref, "run2", "cross_entropy", [4, 6], seed=4)
    specs = [only_forward, trains, mixed_fwd, mixed_train]
    want = [ref.forward_backward([s])[0] for s in specs]
    got = batched.forward_backward_many(specs)
    for g, w in zip(got, want):
        _assert_same_result(g, w)
    assert all(p.grad is None for p in _params(batched, "run0").values())
    for run in ("run0", "run1", "run2"):
        _assert_same_grads(batched, ref, run)
    # Forward-only calls alone take no autograd path at all.
    got = batched.forward_backward_many([only_forward, mixed_fwd])
    _assert_same_result(got[0], want[0])
    _assert_same_result(got[1], want[2])
    assert all(p.grad is None for p in _params(batched, "run0").values())
    _assert_same_grads(batched, ref, "run2")


def test_token_budget_splits_passes_in_order(tiny_model_dir: Path) -> None:
    ref = _engine(tiny_model_dir)
    small = _engine(tiny_model_dir, max_batch_tokens=48)
    runs = _create((ref, small), 4)
    calls: list[int] = []
    handle = small.host(MODEL).base.model.register_forward_hook(lambda module, args, out: calls.append(1))
    # Padded sizes 2x10, 1x15, 1x20, 3x12, 1x8 under a budget of 48 padded tokens:
    # [2x10 + 1x15 -> 3x15 = 45], [1x20 (+3x12 would be 4x20 = 80)], [3x12 + 1x8 -> 4x12 = 48].
    specs = [_spec(ref, runs[0], "cross_entropy", [10, 4], seed=0),
             _spec(ref, runs[1], "cross_entropy", [15], seed=1),
             _spec(ref, runs[2], "cross_entropy", [20], seed=2),
             _spec(ref, runs[3], "cross_entropy", [12, 12, 3], seed=3),
             _spec(ref, runs[0], "cross_entropy", [8], seed=4)]
    try:
        got = small.forward_backward_many(specs)
    finally:
        handle.remove()
    assert len(calls) == 3
    want = [ref.forward_backward([s])[0] for s in specs]
    for g, w in zip(got, want):
        _assert_same_result(g, w)
    for run in runs:
        _assert_same_grads(small, ref, run)


def test_split_by_token_budget() -> None:
    assert split_by_token_budget([], 10) == []
    assert split_by_token_budget([(1, 4), (1, 4), (1, 4)], 8) == [[0, 1], [2]]
    # A request above the budget runs alone; the rest keep their order.
    assert split_by_token_budget([(1, 2), (4, 100), (1, 2), (1, 3)], 10) == [[0], [1], [2, 3]]
    # Padding counts: one long row makes every row of the pass long.
    assert split_by_token_budget([(3, 2), (1, 5)], 19) == [[0], [1]]
    assert split_by_token_budget([(3, 2), (1, 5)], 20) == [[0, 1]]
    shapes = [(random.Random(i).randint(1, 4), random.Random(-i).randint(1, 50)) for i in range(40)]
    passes = split_by_token_budget(shapes, 64)
    assert [i for p in passes for i in p] == list(range(40))
    for p in passes:
        assert len(p) == 1 or sum(shapes[i][0] for i in p) * max(shapes[i][1] for i in p) <= 64
    with pytest.raises(ValueError):
        split_by_token_budget([(1, 1)], 0)


def test_budget_must_be_positive(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError):
        _engine(tiny_model_dir, max_batch_tokens=0)
    assert Engine([]).training.max_batch_tokens == 8192  # the documented default


# -- optim_step_many: several runs' AdamW steps in one fused update --------------------------------


def _state(engine: Engine, run: str) -> list[dict[str, torch.Tensor]]:
    """The run's AdamW state per parameter (moments and step), in parameter order."""
    state = engine.training.runs[run]
    return [state.optimizer.state[p] for p in state.params]


@pytest.mark.parametrize("n_runs", [1, 2, 8])
def test_optim_step_many_equals_optim_step_run_by_run(pair: tuple[Engine, Engine], n_runs: int) -> None:
    """Fused steps give every run the weights, moments and metrics of its own AdamW.step, to 1e-6.

    The runs differ in rank and target set, two hyperparameter sets are mixed
    (one with clipping, which is per run), and one run skips a step so that
    runs at different step counts share an update (bias corrections per run).
    """
    ref, batched = pair
    runs = _create(pair, n_runs)
    clipped = AdamSpec(learning_rate=1e-2, beta1=0.8, beta2=0.9, eps=1e-8, weight_decay=0.1, grad_clip_norm=0.5)
    for step in range(4):
        specs = [_spec(ref, run, "cross_entropy", [4 + i, 9], seed=10 * step + i) for i, run in enumerate(runs)]
        for engine in pair:
            engine.forward_backward_many(specs)
        for run in runs:
            _copy_grads(batched, ref, run)  # the same gradients: compare the optimizers alone
        stepping = [run for i, run in enumerate(runs) if not (step == 1 and i == 0)]
        adams = [ADAM if i % 2 == 0 else clipped for i in range(len(stepping))]
        want = [ref.optim_step(run, adam) for run, adam in zip(stepping, adams)]
        got = batched.optim_step_many(list(zip(stepping, adams)))
        for g, w in zip(got, want):
            assert isinstance(g, dict) and g.keys() == w.keys()
            assert all(_close(g[k], w[k], 1e-6) for k in w), (g, w)
        for run in runs:
            _assert_same_weights(batched, ref, run, 1e-6)
            for mine, theirs in zip(_state(batched, run), _state(ref, run)):
                assert mine.keys() == theirs.keys()
                for key in theirs:
                    _assert_tensor_close(mine[key], theirs[key], 1e-6, key)
            if run in stepping:  # stepped: gradients cleared, as optim_step leaves them
                assert all(p.grad is None for p in _params(batched, run).values())
    assert [batched.training.runs[r].step for r in runs] == [3] + [4] * (n_runs - 1)


def test_optim_step_many_bad_steps_beside_good_ones(pair: tuple[Engine, Engine]) -> None:
    ref, batched = pair
    _create(pair, 2)
    for engine in pair:
        engine.forward_backward_many([_spec(ref, f"run{i}", "cross_entropy", [6], seed=i) for i in range(2)])
    _copy_grads(batched, ref, "run1")
    before = {n: p.detach().clone() for n, p in _params(batched, "run0").items()}
    got = batched.optim_step_many([("run0", AdamSpec(learning_rate=-1.0)), ("nope", ADAM), ("run1", ADAM)])
    assert isinstance(got[0], UserInputError) and "learning_rate" in str(got[0])
    assert isinstance(got[1], EngineError) and not got[1].user
    assert isinstance(got[2], dict) and got[2]["step:max"] == 1.0
    ref.optim_step("run1", ADAM)
    _assert_same_weights(batched, ref, "run1", 1e-6)
    # The refused step changed nothing: same weights, gradients kept for a later step.
    assert all(torch.equal(p, before[n]) for n, p in _params(batched, "run0").items())
    assert any(p.grad is not None for p in _params(batched, "run0").values())
