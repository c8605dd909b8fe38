"""The prepared benchmark scripts run end to end (at their smallest size, on this CPU)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_batching_runs_at_the_tiny_size() -> None:
    # The GPU script's Qwen3 shapes need CUDA; --shape tiny walks the same code on a CPU:
    # model build, runs, both timed sides (real forward/backward passes), optim steps, the table.
    done = subprocess.run(
        [sys.executable, "bench/gpu_batching.py", "--shape", "tiny", "--tenants", "2", "--tokens", "16",
         "--reps", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = re.search(r"^\s*tiny\s+cpu\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x", done.stdout, re.MULTILINE)
    assert row, done.stdout
    assert all(float(v) > 0 for v in row.groups())


def test_roofline_runs_at_the_tiny_size() -> None:
    # FLOP count, matmul references and both timed sides (real passes) end to end.
    done = subprocess.run(
        [sys.executable, "bench/bench_roofline.py", "--size", "tiny", "--runs", "2", "--tokens", "16", "--reps", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    flops = re.search(r"([\d.]+) GFLOP \(FlopCounterMode\)", done.stdout)
    assert flops and float(flops.group(1)) > 0, done.stdout
    assert re.search(r"^torch threads 1: matmul 2048\^3 [\d.]+ GFLOP/s", done.stdout, re.MULTILINE), done.stdout
