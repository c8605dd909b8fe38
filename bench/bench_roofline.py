"""Roofline of one forward_backward on this CPU: achieved GFLOP/s vs a large matmul's.

    python bench/bench_roofline.py [--size small] [--tokens 128] [--rows 1] [--runs 8] [--reps 7]

Counts the floating-point operations of one ``forward_backward`` (``--rows`` x
``--tokens`` tokens, rank-8 LoRA on every linear layer and ``lm_head``, cross
entropy) with torch's ``FlopCounterMode``, times it in-process (median of
``--reps``), and divides. The same for ``--runs`` such requests one at a time and
as one batched pass (``Engine.forward_backward_many``). The reference is this
CPU's fp32 matmul rate on a large square product (2048^3) and on the model's
largest product (the unembedding, ``tokens x hidden @ hidden x vocab``). Each is
measured with 1 torch thread and with torch's default.

If one request alone already runs near the matmul rate, batching requests can
only save the rest (per-operation overhead, small-matrix inefficiency): that is
the ceiling of cross-run batching on a CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench_batching import make_specs, step_all  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from engine.tiny_model import SIZES, build_tiny_model  # noqa: E402
from engine.types import BaseModelSpec, LoraSpec  # noqa: E402


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(m: int, k: int, n: int, reps: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n / median_seconds(lambda: torch.mm(a, b), reps) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    size = SIZES[args.size]
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", size)
        engine = Engine([BaseModelSpec("m", str(model_dir), max_model_len=args.tokens + 1)],
                        max_batch_tokens=max(8192, args.runs * args.rows * args.tokens))
        runs = [f"r{i}" for i in range(args.runs)]
        for i, run in enumerate(runs):
            engine.create_run(run, "m", LoraSpec(rank=8, seed=i))
        specs = make_specs(runs, args.rows, args.tokens, size.vocab_size, seed=0)
        counter = FlopCounterMode(display=False)
        with counter:
            engine.forward_backward(specs[:1])
        flops = counter.get_total_flops()
        step_all(engine, runs[:1])
        print(f"model {args.size} (hidden {size.hidden_size}, {size.num_layers} layers, vocab {size.vocab_size}); "
              f"one forward_backward of {args.rows} x {args.tokens} tokens: {flops / 1e9:.3f} GFLOP "
              f"(FlopCounterMode), {flops / (args.rows * args.tokens) / 1e6:.1f} MFLOP per token; "
              f"load average {os.getloadavg()[0]:.2f}")
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            square = matmul_gflops(2048, 2048, 2048, args.reps)
            unembed = matmul_gflops(args.rows * args.tokens, size.hidden_size, size.vocab_size, args.reps)
            one = median_seconds(lambda: engine.forward_backward(specs[:1]), args.reps)
            seq = median_seconds(lambda: [engine.forward_backward([s]) for s in specs], args.reps)
            many = median_seconds(lambda: engine.forward_backward_many(specs), args.reps)
            step_all(engine, runs)  # the gradients accumulated above are not looked at
            n = args.runs
            print(f"torch threads {threads}: matmul 2048^3 {square:.1f} GFLOP/s, unembedding-shaped matmul "
                  f"{unembed:.1f} GFLOP/s | one forward_backward {one * 1000:.1f} ms = {flops / one / 1e9:.1f} "
                  f"GFLOP/s ({flops / one / 1e9 / square:.0%} of the large matmul) | {n} one at a time "
                  f"{seq * 1000:.1f} ms ({n * flops / seq / 1e9:.1f} GFLOP/s), batched {many * 1000:.1f} ms "
                  f"({n * flops / many / 1e9:.1f} GFLOP/s), {seq / many:.2f}x", flush=True)


if __name__ == "__main__":
    main()
