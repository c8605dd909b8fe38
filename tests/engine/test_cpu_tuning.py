"""engine/cpu_tuning.py: one OpenMP pool per process, and malloc keeping large blocks.

Both run in a fresh Python process: each is about process-wide state (the
threads a process holds, its allocator's thresholds) that this test process
already has in some state of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="torch runs one thread here: no pool to keep single")
def test_sampling_on_another_thread_adds_no_openmp_pool(tmp_path: Path) -> None:
    # A second OpenMP pool makes every training pass after it 25-50 % slower (see
    # cpu_tuning's docstring); the pool shows as new OS threads of the process.
    figures = run_python(f"""
        import json, os, sys, threading
        import torch
        from engine.runtime import Engine
        from engine.tiny_model import SIZES, build_tiny_model
        from engine.types import AdamSpec, BaseModelSpec, Datum, ForwardBackwardSpec, LoraSpec, SampleSpec, Tensor

        def os_threads():
            return len(os.listdir("/proc/self/task"))

        def on_thread(fn):
            thread = threading.Thread(target=fn)
            thread.start()
            thread.join()

        torch_default = torch.get_num_threads()
        model = build_tiny_model({str(tmp_path / "model")!r}, SIZES["small"])
        engine = Engine([BaseModelSpec("m", str(model), max_model_len=256, sampler="hf")])
        tokens = list(range(2, 130))
        spec = ForwardBackwardSpec("r", [Datum(tokens[:-1], {{"target_tokens": Tensor(tokens[1:], [127], "int64")}})],
                                   "cross_entropy")

        def train():  # the training lane: a long-lived thread of its own, as in the server
            engine.create_run("r", "m", LoraSpec(rank=8, seed=0))
            for _ in range(2):
                assert not isinstance(engine.forward_backward_many([spec])[0], Exception)
                engine.optim_step_many([("r", AdamSpec(learning_rate=1e-3))])
            threads["after training"] = os_threads()
            done.wait()

        threads, done = {{}}, threading.Event()
        lane = threading.Thread(target=train)
        lane.start()
        while "after training" not in threads:
            lane.join(0.1)
        def sample():  # counted on its own thread: a finished thread's exit is not instant
            engine.sample("m", None, SampleSpec(prompt=tokens[:64], max_tokens=8, seed=1))
            threads["while sampling"] = os_threads()
        on_thread(sample)
        # The check can fail: plain torch work at torch's default thread count on yet
        # another thread does add a pool.
        hold = threading.Event()
        def plain():
            torch.set_num_threads(torch_default)
            torch.randn(4_000_000).exp_().sum()
            threads["plain torch"] = os_threads()
            hold.wait()
        other = threading.Thread(target=plain)
        other.start()
        while "plain torch" not in threads:
            other.join(0.1)
        hold.set(); done.set()
        other.join(); lane.join()
        print(json.dumps(threads))
    """)
    # The sampling (or plain) thread itself is one more OS thread; a pool adds workers on top.
    assert figures["while sampling"] == figures["after training"] + 1, figures
    assert figures["plain torch"] > figures["after training"] + 1, figures


def test_keep_freed_memory_reuses_large_blocks() -> None:
    # Measured as page faults, not time: a 48 MiB block (above glibc's largest
    # adaptive mmap threshold) is mapped, faulted in and unmapped on every
    # allocation by default, and reused without faults once the thresholds are raised.
    figures = run_python("""
        import json, resource
        import torch
        from engine import cpu_tuning

        def faults_per_block():
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            block = torch.empty(12 * 1024 * 1024)  # 48 MiB of float32
            block.fill_(1.0)
            del block
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

        faults_per_block()  # warm-up: imports, first allocations
        before = [faults_per_block() for _ in range(4)]
        tuned = cpu_tuning.keep_freed_memory()
        # The heap grows to hold the block over the first few rounds, then reuses it.
        after = [faults_per_block() for _ in range(20)]
        print(json.dumps({"before": before, "after": after, "tuned": tuned}))
    """)
    if not figures["tuned"]:
        pytest.skip("not glibc: the allocator is left as it is")
    pages = 48 * 1024 * 1024 // 4096
    if min(figures["before"]) < pages / 2:
        pytest.skip(f"this kernel maps the block in few faults already (huge pages?): {figures}")
    assert sum(figures["after"][-4:]) < pages / 5, figures
