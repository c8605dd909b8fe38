"""Releasing the run whose adapter was active last leaves the shared model usable for sampling.

Found by bench/bench_isolation.py --mode redis: a worker released a run (its state
was restored from a checkpoint) while another tenant's sample was decoding; peft
kept the deleted adapter as the model's active one, and the sample's next decode
step failed with ``KeyError: 'run_..._train_0'`` (a 500-class error for a request
that had nothing to do with that run).
"""

from __future__ import annotations

from pathlib import Path

from engine.runtime import Engine
from engine.types import BaseModelSpec, Datum, ForwardBackwardSpec, LoraSpec, SampleSpec, Tensor

MODEL = "tiny"


def test_sampling_and_training_work_after_the_last_run_is_released(tiny_model_dir: Path) -> None:
    engine = Engine([BaseModelSpec(MODEL, str(tiny_model_dir), max_model_len=64)])
    spec = SampleSpec(prompt=[5, 17, 300], max_tokens=4, temperature=0.0, stop_token_seqs=[])
    before = engine.sample(MODEL, None, spec)
    engine.create_run("only", MODEL, LoraSpec(rank=2, seed=1))
    datum = Datum([5, 17, 300, 42], {"target_tokens": Tensor([17, 300, 42, 7], [4], "int64")})
    engine.forward_backward([ForwardBackwardSpec("only", [datum], "cross_entropy")])  # its adapter is active now
    engine.release_run("only")  # the model has no adapter left

    after = engine.sample(MODEL, None, spec)
    assert after.sequences[0].tokens == before.sequences[0].tokens  # the plain base model, as before
    engine.create_run("next", MODEL, LoraSpec(rank=2, seed=2))  # and a new run trains
    engine.forward_backward([ForwardBackwardSpec("next", [datum], "cross_entropy")])


def test_other_runs_train_and_sample_after_the_active_run_is_released(tiny_model_dir: Path) -> None:
    # Found by tests/dashboard/test_operator_controls.py: an operator stopped a run while
    # another run was loaded; peft kept the stopped run's adapter active, and every later
    # (batched) forward_backward on the server failed with KeyError, category `server`.
    engine = Engine([BaseModelSpec(MODEL, str(tiny_model_dir), max_model_len=64)])
    datum = Datum([5, 17, 300, 42], {"target_tokens": Tensor([17, 300, 42, 7], [4], "int64")})
    engine.create_run("first", MODEL, LoraSpec(rank=2, seed=1))  # peft's active adapter
    engine.create_run("second", MODEL, LoraSpec(rank=2, seed=2))
    engine.release_run("first")

    for outcome in engine.forward_backward_many([ForwardBackwardSpec("second", [datum], "cross_entropy")]):
        assert not isinstance(outcome, Exception), outcome
    engine.forward_backward([ForwardBackwardSpec("second", [datum], "cross_entropy")])
    spec = SampleSpec(prompt=[5, 17, 300], max_tokens=4, temperature=0.0, stop_token_seqs=[])
    assert len(engine.sample(MODEL, None, spec).sequences[0].tokens) == 4
