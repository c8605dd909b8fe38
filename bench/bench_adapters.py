"""Cost of a forward as more tenants' adapters are loaded on one base model.

    python bench/bench_adapters.py [--loaded 1,8,32,64] [--size small] [--reps 5]

In process, on the built-in model: for each number of loaded runs (idle
adapters of other tenants on the same base model), times

* a batched ``forward_backward_many`` of 8 runs x 1 x 128 tokens (or of all
  runs, when fewer are loaded), and
* an HF sample of 32 greedy tokens from a 16-token prompt through a saved
  sampler adapter (one decode step per token), and
* a save of one run's adapter and optimizer state (what a Redis-mode worker
  writes after an optim_step when its automatic checkpoint is due),

median of ``--reps``. None should grow with the adapters loaded beyond those
it uses (``ModelHost.adapter_layers``: peft's own mixed-adapter forward walks
every module of the model, adapters' modules included, twice per call, and
its state-dict helper walks them all to save one adapter).
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
os.environ.setdefault("TINKER_TELEMETRY", "0")

from bench_batching import make_specs  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from engine.tiny_model import SIZES, build_tiny_model  # noqa: E402
from engine.types import BaseModelSpec, LoraSpec, SampleRequest, SampleSpec  # noqa: E402


def median_ms(call, reps: int) -> float:  # type: ignore[no-untyped-def]
    call()  # warm-up: first allocations, an adapter loaded, a layer list rebuilt
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loaded", default="1,8,32,64", help="numbers of runs loaded (default 1,8,32,64)")
    parser.add_argument("--size", default="small", choices=sorted(SIZES), help="built-in model size")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", SIZES[args.size])
        engine = Engine([BaseModelSpec("bench", str(model_dir), max_model_len=256)])
        vocab = engine.host("bench").vocab_size
        engine.create_run("run0", "bench", LoraSpec(rank=8, seed=0))
        engine.save("run0", Path(tmp) / "sampler", with_optimizer=False)
        sample = SampleRequest("bench", str(Path(tmp) / "sampler"),
                               SampleSpec(prompt=list(range(2, 18)), max_tokens=32, temperature=0, stop_token_seqs=[]))
        loaded = 1
        print(f"model {args.size}, median of {args.reps}")
        for target in (int(x) for x in args.loaded.split(",")):
            while loaded < target:
                engine.create_run(f"run{loaded}", "bench", LoraSpec(rank=8, seed=loaded))
                loaded += 1
            specs = make_specs([f"run{i}" for i in range(min(8, loaded))], 1, 128, vocab, seed=0)
            pass_ms = median_ms(lambda: engine.forward_backward_many(specs), args.reps)
            sample_ms = median_ms(lambda: engine.sample_many([sample]), args.reps)
            save_ms = median_ms(lambda: engine.save("run0", Path(tmp) / "saved", with_optimizer=True,
                                                    overwrite=True), args.reps)
            print(f"{loaded:3d} runs loaded: batched pass of {len(specs)} runs {pass_ms:7.1f} ms | "
                  f"HF sample of 32 tokens {sample_ms:7.1f} ms | save {save_ms:5.1f} ms", flush=True)


if __name__ == "__main__":
    main()
