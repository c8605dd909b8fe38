"""Concurrent samples of many tenants through ONE Redis worker: one engine call vs one job at a time.

    python bench/bench_worker_sampling.py [--tenants 8] [--prompt-len 16] [--new-tokens 32]
                                          [--rounds 3] [--sampler hf|vllm] [--size tiny]

Starts two deployments side by side (each: a `tuft` API server and one
``manage.py tuft_worker``, Redis at 127.0.0.1:6379 in a namespace of its own,
PostgreSQL if it answers): ``one-at-a-time`` runs the worker with
``TUFT_SAMPLE_BATCH_MAX=1`` (every sample job decodes its own request, as before
workers batched samples); ``batched`` with ``TUFT_SAMPLE_BATCH_MAX=--tenants``
(the worker that takes a job claims the other queued samples of the model and
decodes them in one engine call). Each round, ``--tenants`` tenants each send one
greedy request at once (``--prompt-len`` prompt tokens, ``--new-tokens`` new
tokens, no early stop) to the base model. Rounds alternate between the two
deployments (A, B, A, B, ...) so that other load on the machine hits both alike;
it prints the median wall time per round, the worker's CPU time per round, the
ratio, and checks that both return identical tokens.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REDIS_URL = "redis://127.0.0.1:6379/10"


def start(home: Path, model_dir: Path, name: str, batch_max: int, sampler: str, tenants: int):  # -> Cluster
    from tests.distributed.cluster import Cluster, postgres_database

    cluster = Cluster(home=home / name, model_dir=model_dir, redis_url=REDIS_URL, database_url=postgres_database(),
                      vllm_limits=True, extra_env={"TUFT_LONG_POLL_S": "25"})
    cluster.start_api()
    cluster.start_worker("bench", {"TUFT_SAMPLE_BATCH_MAX": str(batch_max), "TUFT_DEFAULT_SAMPLER": sampler})
    for i in range(tenants):
        cluster.create_tenant(f"t{i}")
    cluster.wait_workers("bench", timeout=600)
    return cluster


def one_round(cluster, prompts: list[list[int]], new_tokens: int) -> tuple[float, float, list[list[int]]]:
    """Wall seconds, worker CPU seconds and the tokens of one round of concurrent requests."""
    import psutil
    import tinker
    from tinker import types

    from tests.conftest import MODEL_NAME

    samplers = [tinker.ServiceClient(base_url=cluster.url, api_key=cluster.keys[f"t{i}"])
                .create_sampling_client(base_model=MODEL_NAME).result(timeout=300) for i in range(len(prompts))]
    params = types.SamplingParams(max_tokens=new_tokens, temperature=0.0, stop=[])
    worker = psutil.Process(cluster.workers["bench"].pid)

    def cpu() -> float:
        procs = [worker, *worker.children(recursive=True)]  # vLLM's engine processes too
        return sum(p.cpu_times().user + p.cpu_times().system for p in procs if p.is_running())

    cpu0, t0 = cpu(), time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(lambda s, p: s.sample(types.ModelInput.from_ints(p), 1, params).result(timeout=1800),
                               s, p) for s, p in zip(samplers, prompts)]
        tokens = [list(f.result().sequences[0].tokens) for f in futures]
    return time.perf_counter() - t0, cpu() - cpu0, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tenants", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per deployment, after one warm-up round")
    p.add_argument("--sampler", default="hf", choices=["hf", "vllm"])
    p.add_argument("--size", default="tiny", help="built-in model size")
    args = p.parse_args()

    from engine.tiny_model import SIZES, build_tiny_model
    from tests.distributed.cluster import redis_reachable

    if not redis_reachable(REDIS_URL):
        sys.exit("Redis is not running at 127.0.0.1:6379 (start it with: bash .ci/services.sh)")
    rng = random.Random(0)
    vocab = SIZES[args.size].vocab_size
    prompts = [[rng.randrange(10, vocab) for _ in range(args.prompt_len)] for _ in range(args.tenants)]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model_dir = build_tiny_model(home / "model", SIZES[args.size])
        modes = {"one-at-a-time": 1, "batched": args.tenants}
        clusters = {}
        try:
            for name, batch_max in modes.items():
                clusters[name] = start(home, model_dir, name, batch_max, args.sampler, args.tenants)
            for cluster in clusters.values():  # warm-up (a vLLM engine starts here)
                one_round(cluster, prompts, args.new_tokens)
            wall: dict[str, list[float]] = {m: [] for m in modes}
            cpu: dict[str, list[float]] = {m: [] for m in modes}
            tokens: dict[str, list[list[int]]] = {}
            for _ in range(args.rounds):
                for name, cluster in clusters.items():  # interleaved: A, B, A, B, ...
                    seconds, cpu_s, tokens[name] = one_round(cluster, prompts, args.new_tokens)
                    wall[name].append(seconds)
                    cpu[name].append(cpu_s)
        finally:
            for cluster in clusters.values():
                cluster.stop()
    ref = "one-at-a-time"
    print(f"{args.tenants} tenants x 1 greedy request ({args.prompt_len} prompt + {args.new_tokens} new tokens), "
          f"one worker, sampler {args.sampler}, model {args.size}; median of {args.rounds} interleaved rounds; "
          f"load average before: {load:.2f}")
    print(f"{'worker':>14} {'wall s':>8} {'tokens/s':>9} {'worker CPU s':>13} {'speed-up':>9}")
    for name in modes:
        median = statistics.median(wall[name])
        rate = args.tenants * args.new_tokens / median
        print(f"{name:>14} {median:>8.2f} {rate:>9.1f} {statistics.median(cpu[name]):>13.2f} "
              f"{statistics.median(wall[ref]) / median:>8.2f}x")
    print("greedy tokens:", "identical" if tokens["batched"] == tokens[ref] else "DIFFERENT")


if __name__ == "__main__":
    main()
