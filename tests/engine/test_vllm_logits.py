"""The logits processor that lifts vLLM's temperature limit, on its own (needs vLLM, no engine)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")]


def test_only_the_rows_of_hot_requests_are_divided_and_they_follow_their_request() -> None:
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality, _load_logitsprocs_by_fqcns

    from engine.types import BaseModelSpec
    from engine.vllm_logits import ExtraTemperature
    from engine.vllm_requests import EXTRA_TEMPERATURE_ARG, engine_kwargs

    # vLLM's engine core finds it by the name engine_kwargs gives.
    names = engine_kwargs(BaseModelSpec("m", "/m", 256), on_gpu=False)["logits_processors"]
    assert _load_logitsprocs_by_fqcns(names) == [ExtraTemperature]

    proc = ExtraTemperature(None, torch.device("cpu"), False)
    assert proc.is_argmax_invariant()
    hot = SamplingParams(temperature=2.0, extra_args={EXTRA_TEMPERATURE_ARG: 2.5})
    plain = SamplingParams(temperature=1.0)
    proc.update_state(BatchUpdate(batch_size=2, removed=[], moved=[],
                                  added=[(0, plain, [1], []), (1, hot, [1], [])]))
    logits = torch.tensor([[1.0, 2.0], [5.0, -5.0]])
    assert proc.apply(logits.clone()).tolist() == [[1.0, 2.0], [2.0, -2.0]]
    # The batch is condensed: the hot request moves to row 0, the plain one leaves.
    proc.update_state(BatchUpdate(batch_size=1, removed=[0], added=[],
                                  moved=[(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert proc.apply(torch.tensor([[5.0, 10.0]])).tolist() == [[2.0, 4.0]]
    proc.update_state(BatchUpdate(batch_size=0, removed=[0], added=[], moved=[]))
    assert proc.apply(torch.tensor([[5.0, 10.0]])).tolist() == [[5.0, 10.0]]
