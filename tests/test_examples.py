"""The first hour: the README's example and examples/*.py run against a live server.

Each runs in a fresh interpreter with FutureWarning and DeprecationWarning
turned into errors, so a deprecated SDK call in the docs fails the suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import tinker
from tinker import types

from tests.conftest import MODEL_NAME, ROOT, LiveServer

WARNINGS_ARE_ERRORS = ["-W", "error::FutureWarning", "-W", "error::DeprecationWarning:tinker"]


def _run(server: LiveServer, args: list[str], timeout: float = 600) -> str:
    env = {**os.environ, "TINKER_BASE_URL": server.url, "TINKER_API_KEY": server.keys["alice"],
           "TINKER_TELEMETRY": "0"}
    out = subprocess.run([sys.executable, *WARNINGS_ARE_ERRORS, *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    assert "Warning" not in out.stderr, out.stderr
    return out.stdout


def test_readme_example_runs_without_deprecation_warnings(server: LiveServer) -> None:
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "import tinker" in b)
    code = (block.replace('"http://127.0.0.1:8080"', repr(server.url))
            .replace('"tml-..."', repr(server.keys["alice"])))
    assert code != block
    out = _run(server, ["-c", code])
    assert "tinker://" in out and "sampler_weights/demo-sampler" in out


def test_sl_loop_example_learns(server: LiveServer) -> None:
    out = _run(server, ["examples/sl_loop.py", "--steps", "8"])
    first, last = map(float, re.search(r"first loss ([\d.]+), last loss ([\d.]+)", out).groups())
    assert last < first / 2, out


def test_rl_loop_example_runs(server: LiveServer) -> None:
    out = _run(server, ["examples/rl_loop.py", "--iterations", "3"])
    first, final = map(float, re.search(r"first reward ([\d.]+), final reward ([\d.]+)", out).groups())
    assert 0.0 <= first <= 1.0 and final > first, out


def test_base_model_by_its_path(server: LiveServer, tiny_model_dir) -> None:
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["bob"])
    training = client.create_lora_training_client(base_model=str(tiny_model_dir), rank=2).result(timeout=120)
    assert training.get_info().model_data.model_name == MODEL_NAME
    sampler = client.create_sampling_client(base_model=str(tiny_model_dir)).result(timeout=120)
    result = sampler.sample(types.ModelInput.from_ints([5, 17]), 1,
                            types.SamplingParams(max_tokens=2, temperature=0)).result(timeout=120)
    assert len(result.sequences[0].tokens) >= 1
