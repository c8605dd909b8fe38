"""Engine unit tests (no Django): runs learn, stay isolated, honour AdamW, checkpoint exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.runtime import Engine
from engine.types import AdamSpec, BaseModelSpec, Datum, ForwardBackwardSpec, LoraSpec, Tensor, UserInputError

MODEL = "tiny"


@pytest.fixture
def engine(tiny_model_dir: Path) -> Engine:
    return Engine([BaseModelSpec(MODEL, str(tiny_model_dir), max_model_len=64)])


def _datum(tokens: list[int], targets: list[int]) -> Datum:
    return Datum(tokens=tokens, loss_fn_inputs={"target_tokens": Tensor(targets, [len(targets)], "int64")})


DATA = [_datum([5, 6, 7, 8, 9], [6, 7, 8, 9, 10]), _datum([20, 21, 22], [21, 22, 23])]


def _fb(engine: Engine, run: str, forward_only: bool = False) -> float:
    spec = ForwardBackwardSpec(run, DATA, "cross_entropy", forward_only=forward_only)
    return engine.forward_backward([spec])[0].metrics["loss:sum"]


def _weights(engine: Engine, run: str) -> dict[str, torch.Tensor]:
    state = engine.training.runs[run]
    return {k: v.detach().clone() for k, v in state.host.adapter_parameters(state.adapter).items()}


def test_loss_goes_down(engine: Engine) -> None:
    engine.create_run("r1", MODEL, LoraSpec(rank=8, seed=0))
    losses = []
    for _ in range(15):
        losses.append(_fb(engine, "r1"))
        engine.optim_step("r1", AdamSpec(learning_rate=2e-2))
    assert losses[-1] < losses[0] / 2


def test_runs_are_isolated(engine: Engine) -> None:
    engine.create_run("a", MODEL, LoraSpec(rank=8, seed=0))
    engine.create_run("b", MODEL, LoraSpec(rank=4, seed=1, train_mlp=False))
    b_before = _weights(engine, "b")
    loss_b = _fb(engine, "b", forward_only=True)
    for _ in range(3):
        _fb(engine, "a")
        engine.optim_step("a", AdamSpec(learning_rate=5e-2))
    # b's weights, gradients and loss are untouched by a's steps.
    for name, value in _weights(engine, "b").items():
        assert torch.equal(value, b_before[name]), name
    state_b = engine.training.runs["b"]
    assert all(p.grad is None for p in state_b.params)
    assert _fb(engine, "b", forward_only=True) == pytest.approx(loss_b, abs=1e-6)
    # b's adapter has no MLP modules: train_mlp=False took effect.
    assert not any("mlp" in n for n in b_before)


def test_adamw_matches_torch_reference(engine: Engine, tiny_model_dir: Path) -> None:
    """Every AdamParams field is honoured: compare with torch.optim.AdamW on a copy."""
    adam = AdamSpec(learning_rate=3e-2, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.1, grad_clip_norm=0.5)
    engine.create_run("r", MODEL, LoraSpec(rank=4, seed=2))
    start = _weights(engine, "r")
    ref = {k: torch.nn.Parameter(v.clone()) for k, v in start.items()}
    ref_opt = torch.optim.AdamW(ref.values(), lr=adam.learning_rate, betas=(adam.beta1, adam.beta2),
                                eps=adam.eps, weight_decay=adam.weight_decay)
    state = engine.training.runs["r"]
    for _ in range(2):
        _fb(engine, "r")
        grads = {k: p.grad.detach().clone() for k, p in state.host.adapter_parameters(state.adapter).items()}
        for k, p in ref.items():
            p.grad = grads[k].clone()
        torch.nn.utils.clip_grad_norm_(list(ref.values()), adam.grad_clip_norm)
        ref_opt.step()
        engine.optim_step("r", adam)
    for name, value in _weights(engine, "r").items():
        torch.testing.assert_close(value, ref[name].detach(), rtol=0, atol=1e-6)


def test_checkpoint_roundtrip_is_exact(engine: Engine, tmp_path: Path) -> None:
    engine.create_run("r", MODEL, LoraSpec(rank=8, seed=0))
    for _ in range(2):
        _fb(engine, "r")
        engine.optim_step("r", AdamSpec(learning_rate=1e-2))
    size = engine.save("r", tmp_path / "ckpt", with_optimizer=True)
    assert size > 0 and (tmp_path / "ckpt" / "adapter_model.safetensors").exists()
    # Continue the original run one step; a restored copy must do exactly the same.
    _fb(engine, "r")
    engine.optim_step("r", AdamSpec(learning_rate=1e-2))
    expected = _fb(engine, "r", forward_only=True)

    engine.load("copy", MODEL, tmp_path / "ckpt", with_optimizer=True)
    _fb(engine, "copy")
    engine.optim_step("copy", AdamSpec(learning_rate=1e-2))
    assert _fb(engine, "copy", forward_only=True) == pytest.approx(expected, abs=1e-6)


def test_a_runs_parameters_stay_its_adapters_as_others_come_and_go(engine: Engine, tmp_path: Path) -> None:
    """``RunState.params`` is looked up once; it must keep naming the model's live adapter
    weights (the ones forward uses and the optimizer steps) through other runs' creation,
    release and checkpoint loads."""
    engine.create_run("r", MODEL, LoraSpec(rank=4, seed=0))
    engine.create_run("other", MODEL, LoraSpec(rank=8, seed=1, train_mlp=False))
    _fb(engine, "other")
    engine.optim_step("other", AdamSpec(learning_rate=1e-2))
    engine.save("other", tmp_path / "ckpt", with_optimizer=True)
    engine.release_run("other")
    engine.load("copy", MODEL, tmp_path / "ckpt", with_optimizer=True)
    engine.load("r", MODEL, _saved(engine, "r", tmp_path / "r-ckpt"), with_optimizer=True)
    for run in ("r", "copy"):
        state = engine.training.runs[run]
        live = list(state.host.adapter_parameters(state.adapter).values())
        assert len(state.params) == len(live) and all(a is b for a, b in zip(state.params, live)), run
    before = _weights(engine, "r")
    _fb(engine, "r")
    engine.optim_step("r", AdamSpec(learning_rate=5e-2))
    assert any(not torch.equal(v, before[k]) for k, v in _weights(engine, "r").items())


def _saved(engine: Engine, run: str, directory: Path) -> Path:
    engine.save(run, directory, with_optimizer=True)
    return directory


def test_failed_checkpoint_write_leaves_nothing(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.create_run("r", MODEL, LoraSpec(rank=2))

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        engine.save("r", tmp_path / "ckpt", with_optimizer=True)
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor a temporary directory


def test_bad_input_is_a_user_error_and_changes_nothing(engine: Engine) -> None:
    engine.create_run("r", MODEL, LoraSpec(rank=4))
    before = _weights(engine, "r")
    bad = [
        [_datum([5, 6, 5000], [6, 7, 8])],  # token id >= vocab
        [_datum([5, 6, 7], [6, 7])],  # target length != input length
        [_datum(list(range(1, 70)), list(range(2, 71)))],  # longer than max_model_len 64
        [],
    ]
    for data in bad:
        with pytest.raises(UserInputError):
            engine.forward_backward([ForwardBackwardSpec("r", data, "cross_entropy")])
    with pytest.raises(UserInputError):
        engine.forward_backward([ForwardBackwardSpec("r", DATA, "nope")])
    with pytest.raises(UserInputError):
        engine.create_run("r2", MODEL, LoraSpec(rank=4096))
    state = engine.training.runs["r"]
    assert all(p.grad is None for p in state.params)
    for name, value in _weights(engine, "r").items():
        assert torch.equal(value, before[name])


def test_forward_backward_many_isolates_a_bad_request(engine: Engine) -> None:
    engine.create_run("good", MODEL, LoraSpec(rank=4, seed=0))
    bad = ForwardBackwardSpec("good", [_datum([5, 6], [6, 99999])], "cross_entropy")
    good = ForwardBackwardSpec("good", DATA, "cross_entropy", forward_only=True)
    unknown = ForwardBackwardSpec("nope", DATA, "cross_entropy")
    outcomes = engine.forward_backward_many([bad, good, unknown])
    assert isinstance(outcomes[0], UserInputError) and "vocabulary" in str(outcomes[0])
    assert not isinstance(outcomes[1], Exception)
    assert outcomes[1].metrics["loss:sum"] == pytest.approx(_fb(engine, "good", forward_only=True), abs=1e-6)
    assert isinstance(outcomes[2], Exception) and not getattr(outcomes[2], "user", True)


def test_a_released_run_is_freed_without_the_garbage_collector(engine: Engine) -> None:
    """The server freezes adapters (tuft_project.gc_freeze: full GC passes no longer
    visit them), which is only free of leaks if a released run's adapter, gradients and
    optimizer state are reclaimed by reference counting alone, i.e. sit in no cycle."""
    import gc
    import weakref

    for run in ("a", "b"):
        engine.create_run(run, MODEL, LoraSpec(rank=4, seed=0))
    engine.forward_backward_many([ForwardBackwardSpec(run, DATA, "cross_entropy") for run in ("a", "b")])
    engine.optim_step_many([(run, AdamSpec(learning_rate=1e-2)) for run in ("a", "b")])
    state = engine.training.runs["a"]
    params = [weakref.ref(p) for p in state.params]
    moments = [weakref.ref(t) for s in state.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    assert params and moments
    del state
    gc.collect()
    gc.disable()
    try:
        engine.release_run("a")
        assert all(r() is None for r in params + moments)
    finally:
        gc.enable()
    assert _fb(engine, "b") > 0  # the other run is intact


def test_the_engine_reports_its_long_lived_loads(tiny_model_dir: Path) -> None:
    """What ``on_loaded`` hears (the server freezes the GC's long-lived objects then):
    the base model, then runs on a geometric schedule, not one report per run."""
    heard: list[str] = []
    engine = Engine([BaseModelSpec(MODEL, str(tiny_model_dir), max_model_len=64)], on_loaded=heard.append)
    for i in range(21):
        engine.create_run(f"r{i}", MODEL, LoraSpec(rank=2, seed=i))
    engine.create_run("r0", MODEL, LoraSpec(rank=2, seed=0))  # already there: not a new run
    assert heard == [f"loading base model {MODEL}", "creating 16 training runs", "creating 20 training runs"]
