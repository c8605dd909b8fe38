"""A long decode yields the shared model between tokens: training is never stuck behind it."""

from __future__ import annotations

import threading
from pathlib import Path

from engine.runtime import Engine
from engine.types import BaseModelSpec, Datum, ForwardBackwardSpec, LoraSpec, SampleSpec, Tensor

MODEL = "tiny"
WAIT_S = 120  # bounded; generous for a loaded machine


def test_a_training_step_runs_between_two_decode_steps_of_a_long_sample(tiny_model_dir: Path) -> None:
    engine = Engine([BaseModelSpec(MODEL, str(tiny_model_dir), max_model_len=128)])
    engine.create_run("run", MODEL, LoraSpec(rank=2))
    sampler = engine.sampler(MODEL)  # the HF back end (BaseModelSpec's default)
    between_steps = threading.Event()
    trained = threading.Event()
    choose = sampler._step  # type: ignore[attr-defined]
    calls = 0

    def decode_step(*args: object) -> object:
        """Picks the next tokens between two forward calls of the decode."""
        nonlocal calls
        calls += 1
        if calls == 3:  # mid-decode, between two forward calls: the model must be free now
            between_steps.set()
            assert trained.wait(WAIT_S), "the training step could not run while a decode was under way"
        return choose(*args)

    sampler._step = decode_step  # type: ignore[attr-defined]
    result: list[object] = []
    decoding = threading.Thread(target=lambda: result.append(
        engine.sample(MODEL, None, SampleSpec(prompt=[5, 17, 300], max_tokens=20, temperature=0.0,
                                              stop_token_seqs=[]))))
    decoding.start()
    assert between_steps.wait(WAIT_S)
    datum = Datum(tokens=[5, 17, 300, 42], loss_fn_inputs={
        "target_tokens": Tensor(data=[17, 300, 42, 99], dtype="int64", shape=[4])})
    out = engine.forward_backward_many([ForwardBackwardSpec("run", [datum], "cross_entropy")])
    trained.set()
    decoding.join(WAIT_S)
    assert not isinstance(out[0], Exception) and out[0].metrics["loss:sum"] > 0
    assert result and len(result[0].sequences[0].tokens) == 20  # type: ignore[attr-defined]
