"""Cross-run batching: N runs' forward_backward one at a time vs as one batched pass.

    python bench/bench_batching.py [--runs 1,2,4,8] [--tokens 128] [--rows 1] [--reps 5] [--size small]
                                   [--threads N]

Builds the built-in model (``small``: hidden 256, 4 layers, 8k vocab), creates
N LoRA runs (ranks 8 and 16 alternating, all linear layers + lm_head), gives
each run a request of ``--rows`` rows of ``--tokens`` tokens, then times
``Engine.forward_backward`` one request at a time against one
``Engine.forward_backward_many`` call over all N requests, in the same process
and interleaved (A, B, A, B, ...) so load on a shared machine hits both alike.
Each timing is the median of ``--reps`` repetitions; one optim_step per run
follows every repetition on both sides (not timed) so gradients stay bounded.
Prints one line per N: wall-clock medians and their ratio, and the same for
the process's CPU time (steadier on a shared, loaded machine; with
``--threads 1`` it is the work done, free of thread spin-waiting).
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.runtime import Engine  # noqa: E402
from engine.tiny_model import SIZES, build_tiny_model  # noqa: E402
from engine.types import AdamSpec, BaseModelSpec, Datum, ForwardBackwardSpec, LoraSpec, Tensor  # noqa: E402

logger = logging.getLogger(__name__)
ADAM = AdamSpec(learning_rate=1e-3)


def make_specs(runs: list[str], rows: int, tokens: int, vocab: int, seed: int) -> list[ForwardBackwardSpec]:
    rng = random.Random(seed)
    specs = []
    for run in runs:
        data = []
        for _ in range(rows):
            seq = [rng.randrange(2, vocab) for _ in range(tokens + 1)]
            data.append(Datum(seq[:-1], {"target_tokens": Tensor(seq[1:], [tokens], "int64")}))
        specs.append(ForwardBackwardSpec(run, data, "cross_entropy"))
    return specs


def step_all(engine: Engine, runs: list[str]) -> None:
    for run in runs:
        engine.optim_step(run, ADAM)


def bench(engine: Engine, model: str, n_runs: int, rows: int, tokens: int, reps: int) -> dict[str, float]:
    """Median wall-clock and CPU seconds of both sides: keys ``{one,batched}_{wall,cpu}``."""
    runs = [f"bench{n_runs}-{i}" for i in range(n_runs)]
    for i, run in enumerate(runs):
        engine.create_run(run, model, LoraSpec(rank=8 if i % 2 == 0 else 16, seed=i))
    vocab = engine.host(model).vocab_size
    specs = make_specs(runs, rows, tokens, vocab, seed=n_runs)
    # Warm-up, not timed: first allocations, peft hooks, autograd graph caches.
    engine.forward_backward(specs)
    engine.forward_backward_many(specs)
    step_all(engine, runs)
    samples: dict[str, list[float]] = {k: [] for k in ("one_wall", "one_cpu", "batched_wall", "batched_cpu")}
    for _ in range(reps):
        for side in ("one", "batched"):
            wall, cpu = time.perf_counter(), time.process_time()
            if side == "one":
                for spec in specs:
                    engine.forward_backward([spec])
            else:
                outcomes = engine.forward_backward_many(specs)
                assert not any(isinstance(o, Exception) for o in outcomes), outcomes
            samples[f"{side}_wall"].append(time.perf_counter() - wall)
            samples[f"{side}_cpu"].append(time.process_time() - cpu)
            step_all(engine, runs)
    for run in runs:
        engine.release_run(run)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="1,2,4,8", help="comma-separated numbers of runs (default 1,2,4,8)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per row (default 128)")
    parser.add_argument("--rows", type=int, default=1, help="rows (data) per request (default 1)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per side (default 5)")
    parser.add_argument("--size", default="small", choices=sorted(SIZES), help="built-in model size")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", SIZES[args.size])
        model = "bench"
        engine = Engine([BaseModelSpec(model, str(model_dir), max_model_len=args.tokens + 1)],
                        max_batch_tokens=max(8192, 8 * args.rows * args.tokens))
        print(f"model {args.size} on {engine.host(model).device}, torch threads {torch.get_num_threads()}, "
              f"{args.rows} x {args.tokens} tokens per run, median of {args.reps}")
        for n in (int(x) for x in args.runs.split(",")):
            t = bench(engine, model, n, args.rows, args.tokens, args.reps)
            print(f"runs {n:2d}: wall one at a time {t['one_wall'] * 1000:7.1f} ms, batched "
                  f"{t['batched_wall'] * 1000:7.1f} ms, speed-up {t['one_wall'] / t['batched_wall']:4.2f}x | "
                  f"CPU {t['one_cpu'] * 1000:7.1f} ms vs {t['batched_cpu'] * 1000:7.1f} ms, "
                  f"{t['one_cpu'] / t['batched_cpu']:4.2f}x", flush=True)


if __name__ == "__main__":
    main()
