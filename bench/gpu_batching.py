"""GPU: cross-run batched training vs one run at a time, on Qwen3-0.6B / Qwen3-8B shapes.

    python bench/gpu_batching.py [--shape qwen3-0.6b qwen3-8b] [--tenants 8] [--tokens 512]
                                 [--rank 16] [--reps 5]
    python bench/gpu_batching.py --shape tiny      # the built-in tiny model, runs on a CPU

No download: for each ``--shape`` the script builds a random-weight Qwen3 with
the real shapes of Qwen3-0.6B or Qwen3-8B (transformers' ``Qwen3Config``, bf16,
written to a temporary directory with the built-in tokenizer beside it; the
engine loads it as a worker does: bf16 on CUDA, fp32 on CPU). ``tiny`` is the
built-in test model, so the script can be checked end to end without a GPU.

It creates ``--tenants`` LoRA runs (rank ``--rank`` on all seven linear
projections of every layer), gives each run one row of ``--tokens`` tokens, then
times, interleaved (sequential, batched, sequential, batched, ...):

* sequential: ``Engine.forward_backward_many`` with one run at a time (N passes;
  the call the server's lane makes for a lone operation);
* batched: one ``Engine.forward_backward_many`` call over all N runs (one pass,
  each row through its own run's adapter).

One optim_step per run follows every repetition on both sides (not timed).
Prints the median of each side and the batched speed-up (sequential ÷ batched),
plus peak GPU memory on CUDA.
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

from gpu_shapes import SHAPES, build_model  # noqa: E402  (bench/, beside this script)


def bench_shape(shape: str, work: Path, tenants: int, tokens: int, rank: int, reps: int) -> dict[str, float]:
    """Median seconds of both sides (``sequential``, ``batched``) and peak GPU GiB (0 on CPU)."""
    import torch

    from engine.runtime import Engine
    from engine.types import AdamSpec, BaseModelSpec, Datum, EngineError, ForwardBackwardSpec, LoraSpec, Tensor

    model_dir = build_model(shape, work)
    engine = Engine([BaseModelSpec(shape, str(model_dir), max_model_len=tokens + 1, max_lora_rank=rank)],
                    max_batch_tokens=tenants * tokens)
    host = engine.host(shape)
    on_gpu = host.device.type == "cuda"
    runs = [f"{shape}-run{i}" for i in range(tenants)]
    for i, run in enumerate(runs):
        # All linear layers: the seven projections of every decoder layer (not lm_head).
        engine.create_run(run, shape, LoraSpec(rank=rank, seed=i, train_unembed=False))
    rng = random.Random(0)
    specs = []
    for run in runs:
        seq = [rng.randrange(2, host.vocab_size) for _ in range(tokens + 1)]
        specs.append(ForwardBackwardSpec(run, [Datum(seq[:-1], {"target_tokens": Tensor(seq[1:], [tokens], "int64")})],
                                         "cross_entropy"))
    adam = AdamSpec(learning_rate=1e-4)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    def sequential() -> None:
        for spec in specs:
            outcome = engine.forward_backward_many([spec])[0]
            if isinstance(outcome, EngineError):
                raise outcome

    def batched() -> None:
        outcomes = engine.forward_backward_many(specs)
        bad = [o for o in outcomes if isinstance(o, EngineError)]
        if bad:
            raise bad[0]

    times: dict[str, list[float]] = {"sequential": [], "batched": []}
    for rep in range(reps + 1):  # repetition 0 warms both sides up and is not counted
        for name, side in (("sequential", sequential), ("batched", batched)):
            sync()
            start = time.perf_counter()
            side()
            sync()
            if rep:
                times[name].append(time.perf_counter() - start)
            for run in runs:
                engine.optim_step(run, adam)
    figures = {name: statistics.median(t) for name, t in times.items()}
    figures["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0
    figures["device"] = str(host.device)
    for run in runs:
        engine.release_run(run)
    engine.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs="+", choices=sorted(SHAPES) + ["tiny"], default=["qwen3-0.6b", "qwen3-8b"])
    parser.add_argument("--tenants", type=int, default=8, help="LoRA runs, one row each (default 8)")
    parser.add_argument("--tokens", type=int, default=512, help="tokens per run's row (default 512)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per side (default 5)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    if not torch.cuda.is_available() and any(s != "tiny" for s in args.shape):
        sys.exit("gpu_batching.py needs a CUDA GPU for the Qwen3 shapes; use --shape tiny to check it on a CPU")
    print(f"{args.tenants} tenants x {args.tokens} tokens, rank {args.rank} LoRA on all linear layers, "
          f"median of {args.reps}", flush=True)
    print(f"{'shape':>11} {'device':>7} {'sequential ms':>14} {'batched ms':>11} {'speed-up':>9} {'peak GiB':>9}",
          flush=True)
    for shape in args.shape:
        with tempfile.TemporaryDirectory(prefix="tuft-gpu-batching-") as tmp:
            f = bench_shape(shape, Path(tmp), args.tenants, args.tokens, args.rank, args.reps)
        print(f"{shape:>11} {f['device']:>7} {f['sequential'] * 1000:>14.1f} {f['batched'] * 1000:>11.1f} "
              f"{f['sequential'] / f['batched']:>8.2f}x {f['peak_gib']:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
