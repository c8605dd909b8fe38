"""GPU: vLLM multi-LoRA sampling throughput at 1, 8 and 32 concurrent adapters.

    python bench/gpu_sampling.py [--shape qwen3-0.6b|qwen3-8b] [--concurrency 1 8 32]
                                 [--prompt-len 128] [--new-tokens 128] [--rank 16] [--compare-hf]

Needs a CUDA machine with vLLM (``bash scripts/install-vllm.sh`` installs
requirements-gpu.txt there). No download: the script builds a random-weight
Qwen3 with the real shapes of Qwen3-0.6B or Qwen3-8B (bf16, written to a
temporary directory with the built-in tokenizer beside it) and random rank-16
PEFT adapters on all seven projections, then loads the model the way a TuFT
worker does (``ModelHost`` for the trainer's copy, ``VLLMSampler`` with
``gpu_memory_utilization`` 0.5 beside it).

For each concurrency C it submits C greedy requests at once, each on a different
adapter (``--prompt-len`` random prompt tokens, ``--new-tokens`` new tokens, no
early stop) and reports generated tokens/s (median of ``--repeats`` rounds after
a warm-up round). ``--compare-hf`` also times the HF back end (batched across
adapters) at each C, as a ratio measured in the same run.
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


def build_adapters(host, out: Path, count: int, rank: int) -> list[str]:  # host: ModelHost
    import torch
    from peft import get_peft_model

    from engine.model_host import lora_config_for
    from engine.types import LoraSpec

    config = lora_config_for(LoraSpec(rank=rank, train_unembed=False))
    model = get_peft_model(host.base, config)
    paths = []
    for i in range(count):
        gen = torch.Generator(device="cuda").manual_seed(i)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data = (torch.randn(p.shape, generator=gen, device="cuda") * 0.01).to(p.dtype)
        model.save_pretrained(out / f"adapter{i}")
        paths.append(str(out / f"adapter{i}"))
    model.unload()  # give the host its plain base model back
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-hf", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_sampling.py needs a CUDA GPU (see bench/bench_sampling.py for the CPU benchmark)")
    from engine.model_host import ModelHost
    from engine.sampling import HFSampler
    from engine.types import BaseModelSpec, EngineError, SampleRequest, SampleSpec

    work = Path(tempfile.mkdtemp(prefix="tuft-gpu-sampling-"))
    model_dir = build_model(args.shape, work)
    most = max(args.concurrency)
    spec = BaseModelSpec("bench", str(model_dir), max_model_len=args.prompt_len + args.new_tokens + 16,
                         sampler="vllm", max_loras=most, max_cpu_loras=most, max_lora_rank=args.rank,
                         gpu_memory_utilization=0.5)
    host = ModelHost(spec)
    adapters = build_adapters(host, work, most, args.rank)
    started = time.perf_counter()
    from engine.vllm_sampling import VLLMSampler  # imports vLLM: part of the start-up cost

    vllm = VLLMSampler(host)
    print(f"{args.shape}: vLLM engine ready in {time.perf_counter() - started:.1f} s "
          f"(GPU memory allocated by this process: {torch.cuda.memory_allocated() / 2**30:.1f} GiB)")
    hf = HFSampler(host) if args.compare_hf else None
    rng = random.Random(0)

    def requests(c: int) -> list[SampleRequest]:
        return [SampleRequest("bench", adapters[i], SampleSpec(
            prompt=[rng.randrange(2, 1000) for _ in range(args.prompt_len)], max_tokens=args.new_tokens,
            temperature=0, stop_token_seqs=[])) for i in range(c)]

    def rate(sampler, batch: list[SampleRequest]) -> float:
        sampler.sample_many(batch)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            outcomes = sampler.sample_many(batch)
            times.append(time.perf_counter() - start)
            assert not any(isinstance(o, EngineError) for o in outcomes), outcomes
        return len(batch) * args.new_tokens / statistics.median(times)

    print(f"{'adapters':>8} {'vLLM tok/s':>11}" + (f" {'HF tok/s':>9} {'ratio':>6}" if hf else ""))
    for c in args.concurrency:
        batch = requests(c)
        v = rate(vllm, batch)
        line = f"{c:>8} {v:>11.0f}"
        if hf is not None:
            h = rate(hf, batch)
            line += f" {h:>9.0f} {v / h:>5.1f}x"
        print(line, flush=True)
    vllm.close()


if __name__ == "__main__":  # vLLM's engine core is a spawned process: keep the guard
    main()
