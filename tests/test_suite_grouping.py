"""The suite's two xdist workers (scripts/test.sh) keep every vLLM test on one worker.

The scheduler in tests/conftest.py groups tests by node id; a vLLM test whose name does not
say so would run on the other worker too and start a second vLLM server there.
"""

from __future__ import annotations

import pytest

from tests.conftest import VLLM_GROUP, suite_group


def test_every_vllm_test_is_scheduled_with_the_others(request: pytest.FixtureRequest) -> None:
    vllm = [item.nodeid for item in request.session.items if item.get_closest_marker("vllm")]
    misplaced = [nodeid for nodeid in vllm if suite_group(nodeid) != VLLM_GROUP]
    assert not misplaced, "name them test_vllm_*.py or give them a `vllm` parameter"


def test_groups_are_modules_except_vllm() -> None:
    assert suite_group("tests/api/test_sampling.py::test_every_sampling_param[vllm]") == VLLM_GROUP
    assert suite_group("tests/api/test_vllm_sampling.py::test_eight_adapters") == VLLM_GROUP
    assert suite_group("tests/api/test_sampling.py::test_every_sampling_param[hf]") == "tests/api/test_sampling.py"
    assert suite_group("tests/api/test_fuzz.py::test_fuzz_every_route[postgresql]") == "tests/api/test_fuzz.py"
