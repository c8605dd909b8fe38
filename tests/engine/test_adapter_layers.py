"""A forward that mixes adapters by row, and a save, cost the same however many adapters are loaded.

peft's own mixed-adapter forward walks every module of the model twice, and
every adapter adds modules of its own, so with many tenants' runs on one base
model each training pass and each HF decode step paid for all of them
(measured on the built-in small model: a 32-token HF sample took 452 ms with
one run loaded and 864 ms with 64). ``ModelHost`` keeps the adapter layers
instead. Saving a run's adapter through peft walked every module and
parameter of the shared model too (7 ms with one run, 80 ms with 64); the
engine writes the run's own parameters under peft's names. These tests count
the modules visited (``named_modules`` calls, one per module walked) during a
batched pass, a sample and a save, with few and with many adapters loaded:
the count must not grow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from engine import checkpoints

from engine.runtime import Engine
from engine.types import (
    AdamSpec,
    BaseModelSpec,
    Datum,
    ForwardBackwardSpec,
    LoraSpec,
    SampleRequest,
    SampleSpec,
    Tensor,
)

MODEL = "tiny"
ADAM = AdamSpec(learning_rate=1e-2)


@pytest.fixture
def engine(tiny_model_dir: Path) -> Engine:
    return Engine([BaseModelSpec(MODEL, str(tiny_model_dir), max_model_len=64)])


def _walked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A counter of ``Module.named_modules`` calls (it recurses once per module visited)."""
    calls = [0]
    original = torch.nn.Module.named_modules

    def counting(self: torch.nn.Module, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "named_modules", counting)
    return calls


def _specs(runs: list[str]) -> list[ForwardBackwardSpec]:
    return [ForwardBackwardSpec(run, [Datum([3 + i, 4, 5, 6], {"target_tokens": Tensor([4, 5, 6, 7], [4], "int64")})],
                                "cross_entropy") for i, run in enumerate(runs)]


def _add_runs(engine: Engine, first: int, count: int) -> None:
    for i in range(first, first + count):
        engine.create_run(f"run{i}", MODEL, LoraSpec(rank=4, seed=i))


def test_a_batched_pass_walks_no_more_modules_with_more_adapters_loaded(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = ["run0", "run1"]
    _add_runs(engine, 0, 2)
    engine.forward_backward_many(_specs(runs))  # first pass: lazy set-up, not counted
    walked = _walked(monkeypatch)
    assert not any(isinstance(o, Exception) for o in engine.forward_backward_many(_specs(runs)))
    with_two = walked[0]

    _add_runs(engine, 2, 30)  # 30 more tenants' runs on the same base model, idle
    engine.forward_backward_many(_specs(runs))  # the adapter layers are found again once
    walked[0] = 0
    assert not any(isinstance(o, Exception) for o in engine.forward_backward_many(_specs(runs)))
    assert walked[0] == with_two, f"{with_two} module visits per pass with 2 runs, {walked[0]} with 32"


def test_an_hf_sample_walks_no_more_modules_with_more_adapters_loaded(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _add_runs(engine, 0, 2)
    engine.save("run0", tmp_path / "sampler", with_optimizer=False)
    request = SampleRequest(MODEL, str(tmp_path / "sampler"),
                            SampleSpec(prompt=[5, 6, 7], max_tokens=8, temperature=0, stop_token_seqs=[]))
    first = engine.sample_many([request])[0]  # loads the sampler adapter: not counted
    walked = _walked(monkeypatch)
    again = engine.sample_many([request])[0]
    with_two = walked[0]
    assert not isinstance(again, Exception) and again.sequences[0].tokens == first.sequences[0].tokens

    _add_runs(engine, 2, 30)
    engine.sample_many([request])
    walked[0] = 0
    more = engine.sample_many([request])[0]
    assert not isinstance(more, Exception) and more.sequences[0].tokens == first.sequences[0].tokens
    assert walked[0] == with_two, f"{with_two} module visits per sample with 2 runs, {walked[0]} with 32"


def test_a_save_writes_what_peft_would_and_walks_no_more_modules_with_more_adapters_loaded(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.create_run("attn-only", MODEL, LoraSpec(rank=8, seed=7, train_mlp=False, train_unembed=False))
    _add_runs(engine, 0, 2)
    engine.forward_backward_many(_specs(["run0", "attn-only"]))
    engine.optim_step_many([("run0", ADAM), ("attn-only", ADAM)])
    for run in ("run0", "attn-only"):  # the same keys and weights as peft's own state dict
        state = engine.training.runs[run]
        want = get_peft_model_state_dict(state.host.peft, adapter_name=state.adapter, save_embedding_layers=False)
        engine.save(run, tmp_path / run, with_optimizer=False)
        got = load_file(str(tmp_path / run / checkpoints.ADAPTER_WEIGHTS))
        assert sorted(got) == sorted(want), run
        assert all(torch.equal(got[k], want[k].float()) for k in want), run
        assert any(v.abs().sum() > 0 for k, v in got.items() if "lora_B" in k), "a trained adapter has non-zero B"

    walked = _walked(monkeypatch)
    engine.save("run0", tmp_path / "two", with_optimizer=True)
    with_three = walked[0]
    _add_runs(engine, 2, 30)
    walked[0] = 0
    engine.save("run0", tmp_path / "many", with_optimizer=True)
    assert walked[0] == with_three, f"{with_three} module visits per save with 3 runs, {walked[0]} with 33"
