"""Sampling across many adapters: vLLM vs the HF back end (one at a time, and batched).

    python bench/bench_sampling.py [--adapters 8] [--prompt-len 16] [--new-tokens 32] [--size tiny] [--repeats 3]

Builds the built-in model (``--size``) and ``--adapters`` random rank-8 PEFT
adapters in a temporary directory, then times one round of ``--adapters``
concurrent greedy requests (one per adapter, ``--prompt-len`` prompt tokens,
``--new-tokens`` new tokens, no early stop) with:

* HF one at a time: ``HFSampler.sample_many([request])`` for each request in turn
  (what sampling looked like before cross-adapter batching);
* HF batched: ``HFSampler.sample_many(all requests)`` (one decode batch, per-row adapters);
* vLLM: ``VLLMSampler.sample_many(all requests)`` (all submitted to the engine at once).

Every back end is warmed up first (adapters loaded), then the median of
``--repeats`` rounds is reported, with the ratios against HF one-at-a-time
measured in this run, and a check that all three produce identical greedy
tokens. Also reports the vLLM engine's start-up time and the resident memory
(RSS) of its engine processes. Needs vLLM (``bash scripts/install-vllm.sh``).
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
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_adapters(model_dir: Path, out: Path, count: int) -> list[str]:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.model_host import lora_config_for
    from engine.types import LoraSpec

    paths = []
    for i in range(count):
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model = get_peft_model(base, lora_config_for(LoraSpec(rank=8)))
        gen = torch.Generator().manual_seed(i)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data = torch.randn(p.shape, generator=gen) * 0.05
        model.save_pretrained(out / f"adapter{i}")
        paths.append(str(out / f"adapter{i}"))
    return paths


def child_rss_mib() -> float:
    """Resident memory of this process's children (vLLM's engine core and worker), MiB."""
    import psutil

    children = psutil.Process().children(recursive=True)
    return sum(c.memory_info().rss for c in children) / 2**20


def timed(fn: Callable[[], list], repeats: int) -> tuple[float, list]:
    times, result = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import psutil
    import torch

    from engine.model_host import ModelHost
    from engine.sampling import HFSampler
    from engine.tiny_model import SIZES, build_tiny_model
    from engine.types import BaseModelSpec, EngineError, SampleRequest, SampleSpec

    work = Path(tempfile.mkdtemp(prefix="tuft-bench-sampling-"))
    model_dir = build_tiny_model(work / "model", SIZES[args.size])
    adapters = make_adapters(model_dir, work, args.adapters)
    spec = BaseModelSpec("bench", str(model_dir), max_model_len=512, sampler="vllm", max_loras=args.adapters,
                         max_cpu_loras=max(args.adapters, 8), max_lora_rank=8)
    host = ModelHost(spec, device=torch.device("cpu"))
    rng = random.Random(0)
    requests = [SampleRequest("bench", a, SampleSpec(
        prompt=[rng.randrange(2, host.vocab_size) for _ in range(args.prompt_len)],
        max_tokens=args.new_tokens, temperature=0, stop_token_seqs=[])) for a in adapters]

    hf = HFSampler(host)
    rss_before = psutil.Process().memory_info().rss / 2**20
    started = time.perf_counter()
    from engine.vllm_sampling import VLLMSampler  # imports vLLM: part of the start-up cost

    vllm = VLLMSampler(host)
    startup = time.perf_counter() - started

    def tokens(outcomes: list) -> list[list[int]]:
        bad = [o for o in outcomes if isinstance(o, EngineError)]
        assert not bad, bad
        return [o.sequences[0].tokens for o in outcomes]

    runs = {
        "HF one at a time": lambda: [hf.sample_many([r])[0] for r in requests],
        "HF batched": lambda: hf.sample_many(requests),
        "vLLM": lambda: vllm.sample_many(requests),
    }
    for run in runs.values():  # warm-up: adapters loaded, caches built
        run()
    results = {name: timed(run, args.repeats) for name, run in runs.items()}
    base_time = results["HF one at a time"][0]
    reference = tokens(results["HF one at a time"][1])
    total = args.adapters * args.new_tokens
    print(f"{args.adapters} concurrent requests on {args.adapters} adapters, model {args.size} "
          f"({sum(p.numel() for p in host.base.parameters()) / 1e6:.2f}M params), prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens each; median of {args.repeats}")
    print(f"{'back end':<18} {'seconds':>8} {'tokens/s':>9} {'speed-up':>9}  greedy tokens")
    for name, (seconds, outcomes) in results.items():
        same = "identical" if tokens(outcomes) == reference else "DIFFERENT"
        print(f"{name:<18} {seconds:8.3f} {total / seconds:9.1f} {base_time / seconds:8.2f}x  {same}")
    print(f"vLLM engine start-up (import + engine ready): {startup:.1f} s")
    print(f"vLLM engine processes resident memory: {child_rss_mib():.0f} MiB "
          f"(this process: {psutil.Process().memory_info().rss / 2**20:.0f} MiB, {rss_before:.0f} MiB before vLLM)")
    vllm.close()


if __name__ == "__main__":  # vLLM's engine core is a spawned process: keep the guard
    main()
