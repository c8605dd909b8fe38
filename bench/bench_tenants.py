"""Concurrent tenants through one worker: embedded vs Redis (RQ) dispatch.

    python bench/bench_tenants.py [--tenants 1 4 8] [--steps 6] [--batch 4] [--seq 64] [--size small]
                                  [--modes embedded unbatched redis] [--rounds 2]

For each mode it starts real processes: embedded = one `tuft` server (worker
threads inside; the scheduler batches ready forward_backwards of several runs
into one engine call); unbatched = the same with ``TUFT_TRAIN_BATCH_MAX=1`` (one
operation per engine call, as before the scheduler batched); redis = one `tuft`
API server plus ONE `manage.py tuft_worker` (persistence mode redis_url, so every
optim_step also writes its automatic checkpoint), on the local Redis
(127.0.0.1:6379, a namespace of its own) and PostgreSQL if it answers (else
SQLite). Then:

* throughput: N tenants at once, each with its own LoRA run, each doing
  ``--steps`` forward_backward + optim_step steps through the unmodified SDK;
  total steps per second, for N in ``--tenants``;
* latency: one tenant, sequential small operations (a 1x8-token ``forward``,
  and an ``optim_step``), median (and max) time from submission to result.

Every mode's processes run side by side and the measurements alternate between
them (mode A, mode B, ... for each N, ``--rounds`` times; medians): load from
other work hits every mode alike. Prints the modes side by side with their
ratios (measured in one run: these machines are noisy, compare within a run only).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TINKER_TELEMETRY", "0")

MODEL = "tuft/tiny-qwen3"


def make_data(batch: int, seq: int, vocab: int, seed: int):  # -> list[types.Datum]
    from tinker import types

    rng = random.Random(seed)
    rows = [[rng.randrange(2, vocab) for _ in range(seq + 1)] for _ in range(batch)]
    return [
        types.Datum(model_input=types.ModelInput.from_ints(r[:-1]),
                    loss_fn_inputs={"target_tokens": types.TensorData(data=r[1:], dtype="int64", shape=[len(r) - 1])})
        for r in rows
    ]


def tenant_loop(url: str, key: str, data: list, steps: int, barrier: threading.Barrier, out: list) -> None:
    import tinker
    from tinker import types

    training = tinker.ServiceClient(base_url=url, api_key=key).create_lora_training_client(
        base_model=MODEL, rank=8, seed=0).result(timeout=300)
    adam = types.AdamParams(learning_rate=1e-3)
    training.forward_backward(data, "cross_entropy").result(timeout=300)  # warm-up, not timed
    training.optim_step(adam).result(timeout=300)
    barrier.wait()
    for _ in range(steps):
        fb = training.forward_backward(data, "cross_entropy")
        opt = training.optim_step(adam)
        fb.result(timeout=600)
        opt.result(timeout=600)
    out.append(time.perf_counter())


def throughput(url: str, keys: list[str], data: list, steps: int) -> float:
    """Steps per second of len(keys) tenants training at once."""
    barrier = threading.Barrier(len(keys) + 1)
    ends: list[float] = []
    threads = [threading.Thread(target=tenant_loop, args=(url, k, data, steps, barrier, ends)) for k in keys]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if len(ends) != len(keys):
        raise RuntimeError("a tenant failed; see the server logs")
    return len(keys) * steps / (max(ends) - start)


def latency(url: str, key: str, repeats: int) -> dict[str, float]:
    """Median (and max) seconds from submission to result of small sequential operations."""
    import tinker
    from tinker import types

    training = tinker.ServiceClient(base_url=url, api_key=key).create_lora_training_client(
        base_model=MODEL, rank=8, seed=0).result(timeout=300)
    small = make_data(1, 8, 200, seed=1)
    adam = types.AdamParams(learning_rate=1e-3)
    training.forward(small, "cross_entropy").result(timeout=300)  # warm-up
    result = {}
    for name, call in (("forward", lambda: training.forward(small, "cross_entropy")),
                       ("optim_step", lambda: training.optim_step(adam))):
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call().result(timeout=300)
            samples.append(time.perf_counter() - t0)
        result[name] = statistics.median(samples)
        result[name + ":max"] = max(samples)
    return result


def start_mode(mode: str, home: Path, model_dir: Path, n_keys: int, database_url: str | None):
    """Start one mode's processes; returns (url, tenant keys, stop)."""
    from tests.conftest import start_server, write_models_yaml
    from tests.distributed.cluster import Cluster

    if mode in ("embedded", "unbatched"):
        env = {"DATABASE_URL": database_url} if database_url else {}
        if mode == "unbatched":
            env["TUFT_TRAIN_BATCH_MAX"] = "1"
        server = start_server(home / mode, write_models_yaml(home / "models.yaml", model_dir, 4096),
                              extra_env=env or None)
        return server.url, [server.create_tenant(f"t{i}") for i in range(n_keys)], server.stop
    cluster = Cluster(home=home / "redis", model_dir=model_dir, redis_url="redis://127.0.0.1:6379/10",
                      database_url=database_url, extra_env={"TUFT_LONG_POLL_S": "25"})
    cluster.models_yaml.write_text(cluster.models_yaml.read_text().replace("max_model_len: 256",
                                                                           "max_model_len: 4096"))
    cluster.start_api()
    cluster.start_worker("bench")
    keys = [cluster.create_tenant(f"t{i}") for i in range(n_keys)]
    cluster.wait_workers("bench")
    return cluster.url, keys, cluster.stop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tenants", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--modes", nargs="+", default=["embedded", "unbatched", "redis"],
                   choices=["embedded", "unbatched", "redis"], help="the first one is the reference")
    p.add_argument("--steps", type=int, default=6, help="timed steps per tenant")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--size", default="small", help="built-in model size (tiny | small)")
    p.add_argument("--repeats", type=int, default=20, help="sequential operations per latency figure")
    p.add_argument("--rounds", type=int, default=2, help="alternating throughput measurements per mode (median)")
    args = p.parse_args()

    from engine.tiny_model import SIZES, build_tiny_model
    from tests.distributed.cluster import postgres_database, redis_reachable

    if not redis_reachable("redis://127.0.0.1:6379/10"):
        sys.exit("Redis is not running at 127.0.0.1:6379 (start it with: bash .ci/services.sh)")
    load = os.getloadavg()[0]  # other work on the machine skews every figure
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model_dir = build_tiny_model(home / "model", SIZES[args.size])
        data = make_data(args.batch, args.seq, SIZES[args.size].vocab_size, seed=0)
        figures: dict[str, dict] = {}
        # Every mode's processes run side by side (each on its own database), and the
        # measurements alternate between them (A, B, A, B, ...): load from other work
        # on the machine then hits every mode alike, and the ratios are fair.
        started = {}
        try:
            for mode in args.modes:
                database_url = postgres_database()  # the same kind of database for every mode
                started[mode] = start_mode(mode, home, model_dir, max(args.tenants), database_url)
                figures[mode] = {"database": "postgresql" if database_url else "sqlite",
                                 **{f"tput{n}": [] for n in args.tenants}}
            for mode in args.modes:
                url, keys, _ = started[mode]
                figures[mode]["latency"] = latency(url, keys[0], args.repeats)
                print(f"{mode} median latency: " + ", ".join(
                    f"{op} {figures[mode]['latency'][op]:.4f} s" for op in ("forward", "optim_step")), flush=True)
            for r in range(args.rounds):
                for n in args.tenants:
                    for mode in args.modes:
                        url, keys, _ = started[mode]
                        figures[mode][f"tput{n}"].append(throughput(url, keys[:n], data, args.steps))
                print(f"round {r + 1}: " + "; ".join(
                    f"{mode} " + ", ".join(f"{n}t {figures[mode][f'tput{n}'][-1]:.2f}" for n in args.tenants)
                    for mode in args.modes) + " steps/s", flush=True)
        finally:
            for _, _, stop in started.values():
                stop()
        for mode in args.modes:
            for n in args.tenants:
                figures[mode][f"tput{n}"] = statistics.median(figures[mode][f"tput{n}"])

    ref = args.modes[0]
    print(f"model {args.size}; batch {args.batch}x{args.seq}; {args.steps} timed steps per tenant; one worker; "
          f"database {figures[ref]['database']}; load average before: {load:.2f}")
    print(f"{'tenants':>8} " + " ".join(f"{m + ' steps/s':>18}" for m in args.modes)
          + "".join(f" {m + '/' + ref:>20}" for m in args.modes[1:]))
    for n in args.tenants:
        values = [figures[m][f"tput{n}"] for m in args.modes]
        print(f"{n:>8} " + " ".join(f"{v:>18.2f}" for v in values)
              + "".join(f" {v / values[0]:>19.2f}x" for v in values[1:]))
    for n in args.tenants[1:]:
        first = args.tenants[0]
        print(f"scaling {first}->{n} tenants: " + ", ".join(
            f"{m} {figures[m][f'tput{n}'] / figures[m][f'tput{first}']:.2f}x" for m in args.modes))
    print(f"{'median latency':>15} " + " ".join(f"{m:>10}" for m in args.modes) + "   (max)")
    for op in ("forward", "optim_step"):
        print(f"{op:>15} " + " ".join(f"{figures[m]['latency'][op]:>10.4f}" for m in args.modes)
              + "   (" + ", ".join(f"{figures[m]['latency'][op + ':max']:.3f}" for m in args.modes) + ")")


if __name__ == "__main__":
    main()
