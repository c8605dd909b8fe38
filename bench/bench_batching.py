"""Cross-run batching: N tenants' forward_backward one at a time vs as one batched pass.

    python bench/bench_batching.py [--via sdk|engine] [--runs 1,2,4,8] [--tokens 128] [--rows 1]
                                   [--reps 5] [--size small] [--steps 4] [--baseline DIR] [--threads N]

``--via sdk`` (the default, issue #11's target): starts two real ``tuft``
servers (three with ``--baseline DIR``: a batched one running the code in DIR) on the built-in model (``small``: hidden 256, 4 layers, 8k vocab), one
with default batching and one with ``TUFT_TRAIN_BATCH_MAX=1`` (one operation per
engine call), and keeps both up for the whole run. For each N, N tenants (each
its own ``ServiceClient`` and rank-8 LoRA run, one thread each) loop ``--steps``
times over ``forward_backward`` (``--rows`` x ``--tokens`` tokens) and
``optim_step``, submitting both before waiting on either (the pipelined use
the SDK is meant for), first on one server, then on the other, ``--reps``
times alternately (A, B, A, B: shared load hits both sides alike). Reported per
N: median aggregate tokens/s of each side, their ratio, and the server
process's CPU seconds per step (user + system; steadier than wall time on a
loaded machine) and the benchmark process's (the N SDK clients: their HTTP
requests and result polls share the server's cores). A reference line follows:
one tenant sending the N rows in one request, on the batched server. Last, the
ceiling: the same N runs one at a time vs batched in this process
(``--via engine``'s measurement, torch's default threads as the servers):
through the SDK the ratio cannot exceed it.

``--via engine``: the same comparison in-process, without the server:
``Engine.forward_backward_many`` called with one request at a time (the call the
server's lane makes for a lone operation) against one call over all N requests (ranks 8 and 16
alternating, all linear layers + lm_head), interleaved, median of ``--reps``;
one optim_step per run follows every repetition on both sides (not timed).
Prints wall-clock medians and their ratio, and the same
for the process's CPU time (with ``--threads 1`` it is the work done, free of
thread spin-waiting).
"""

from __future__ import annotations

import argparse
import logging
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

from engine import cpu_tuning  # noqa: E402
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


def bench_engine(engine: Engine, model: str, n_runs: int, rows: int, tokens: int, reps: int) -> dict[str, float]:
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
                    engine.forward_backward_many([spec])
            else:
                outcomes = engine.forward_backward_many(specs)
                assert not any(isinstance(o, Exception) for o in outcomes), outcomes
            samples[f"{side}_wall"].append(time.perf_counter() - wall)
            samples[f"{side}_cpu"].append(time.process_time() - cpu)
            step_all(engine, runs)
    for run in runs:
        engine.release_run(run)
    return {k: statistics.median(v) for k, v in samples.items()}


# -- through the server, with the SDK ----------------------------------------------

MODEL = "tuft/tiny-qwen3"


def sdk_data(rows: int, tokens: int, vocab: int, seed: int) -> list:  # -> list[tinker.types.Datum]
    from tinker import types

    rng = random.Random(seed)
    data = []
    for _ in range(rows):
        seq = [rng.randrange(2, vocab) for _ in range(tokens + 1)]
        data.append(types.Datum(model_input=types.ModelInput.from_ints(seq[:-1]),
                                loss_fn_inputs={"target_tokens": types.TensorData(
                                    data=seq[1:], dtype="int64", shape=[tokens])}))
    return data


class Tenant:
    """One tenant's SDK training client on one server, warmed up (first pass, first step)."""

    def __init__(self, url: str, key: str, seed: int) -> None:
        import tinker
        from tinker import types

        self.adam = types.AdamParams(learning_rate=1e-3)
        self.client = tinker.ServiceClient(base_url=url, api_key=key).create_lora_training_client(
            base_model=MODEL, rank=8, seed=seed).result(timeout=300)

    def steps(self, data: list, n: int) -> None:
        for _ in range(n):
            # Submitted back to back, then awaited: the server sees the next operation
            # while it runs this one (how the SDK is meant to be used).
            fb = self.client.forward_backward(data, "cross_entropy")
            opt = self.client.optim_step(self.adam)
            fb.result(timeout=600)
            opt.result(timeout=600)


def timed_round(tenants: list[Tenant], data: list[list], steps: int,
                server_pid: int) -> tuple[float, float, float]:
    """All tenants step at once: (wall, server CPU, client CPU) seconds from release to the last result."""
    import psutil

    barrier = threading.Barrier(len(tenants) + 1)
    errors: list[BaseException] = []

    def loop(tenant: Tenant, own: list) -> None:
        barrier.wait()
        try:
            tenant.steps(own, steps)
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(t, d)) for t, d in zip(tenants, data)]
    for t in threads:
        t.start()
    proc = psutil.Process(server_pid)
    cpu0 = sum(proc.cpu_times()[:2])
    barrier.wait()
    start = time.perf_counter()
    client0 = time.process_time()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    client = time.process_time() - client0
    if errors:
        raise RuntimeError(f"a tenant failed: {errors[0]!r}")
    return wall, sum(proc.cpu_times()[:2]) - cpu0, client


def create_tenants(server, n: int) -> list[str]:  # server: tests.conftest.LiveServer
    """``n`` tenants with one API key each, in one ``manage.py`` run (each run costs seconds)."""
    code = ("from sessions_app.actions import do_create_api_key, do_create_tenant\n"
            f"for i in range({n}):\n"
            "    print(do_create_api_key(do_create_tenant(f't{i}'), '')[1])\n")
    keys = [word for word in server.manage("shell", "-c", code).split() if word.startswith("tml-")]
    assert len(keys) == n, keys
    return keys


def bench_sdk(args: argparse.Namespace) -> None:
    from tests import conftest
    from tests.conftest import start_server, write_models_yaml

    ns = [int(x) for x in args.runs.split(",")]
    vocab = SIZES[args.size].vocab_size
    sides: dict[str, tuple[Path, dict[str, str]]] = {
        "batched": (ROOT, {}), "one at a time": (ROOT, {"TUFT_TRAIN_BATCH_MAX": "1"})}
    if args.baseline:  # e.g. `git archive <commit> | tar -x -C DIR`: the code before a change
        sides["baseline batched"] = (Path(args.baseline).resolve(), {})
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model_dir = build_tiny_model(home / "model", SIZES[args.size])
        config = write_models_yaml(home / "models.yaml", model_dir, max_model_len=args.rows * args.tokens + 64)
        servers = {}
        for side, (tree, env) in sides.items():
            conftest.ROOT = tree  # the tree whose `tuft_project.cli` and manage.py this server runs
            servers[side] = start_server(home / side.replace(" ", "-"), config, extra_env=env or None)
            servers[side].keys["tree"] = str(tree)
        try:
            keys = {}
            for side, srv in servers.items():
                conftest.ROOT = Path(srv.keys["tree"])
                keys[side] = create_tenants(srv, max(ns))
            tenants = {side: [Tenant(srv.url, key, seed=i) for i, key in enumerate(keys[side])]
                       for side, srv in servers.items()}
            data = [sdk_data(args.rows, args.tokens, vocab, seed=i) for i in range(max(ns))]
            for side, srv in servers.items():  # warm-up, not timed: first passes, allocations
                timed_round(tenants[side], data, 1, srv.process.pid)
            print(f"model {args.size}, {args.rows} x {args.tokens} tokens per forward_backward, "
                  f"{args.steps} steps per tenant per round, median of {args.reps} rounds per side, "
                  f"alternating; load average before: {load:.2f}", flush=True)
            names = list(sides)
            print(f"{'tenants':>7} | " + " | ".join(f"{name + ' tok/s':>22}" for name in names)
                  + " | " + " | ".join(f"{name + ' / one at a time':>30}" for name in names if name != "one at a time")
                  + " | server CPU s per step: " + ", ".join(names) + " | client CPU s per step: same order")
            for n in ns:
                wall: dict[str, list[float]] = {side: [] for side in sides}
                cpu: dict[str, list[float]] = {side: [] for side in sides}
                client: dict[str, list[float]] = {side: [] for side in sides}
                for _ in range(args.reps):
                    for side, srv in servers.items():
                        w, c, k = timed_round(tenants[side][:n], data[:n], args.steps, srv.process.pid)
                        wall[side].append(w)
                        cpu[side].append(c)
                        client[side].append(k)
                tokens = n * args.steps * args.rows * args.tokens
                rate = {side: tokens / statistics.median(wall[side]) for side in sides}
                per_step = {side: statistics.median(cpu[side]) / (n * args.steps) for side in sides}
                client_step = {side: statistics.median(client[side]) / (n * args.steps) for side in sides}
                base = rate["one at a time"]
                print(f"{n:>7} | " + " | ".join(f"{rate[name]:>22.1f}" for name in names)
                      + " | " + " | ".join(f"{rate[name] / base:>29.2f}x" for name in names if name != "one at a time")
                      + " | " + ", ".join(f"{per_step[name]:.3f}" for name in names)
                      + " | " + ", ".join(f"{client_step[name]:.3f}" for name in names), flush=True)
            # Reference: one tenant, the N rows in one request (the cost is per operation?).
            for n in ns:
                rows = [datum for own in data[:n] for datum in own]
                rounds = [timed_round(tenants["batched"][:1], [rows], args.steps, servers["batched"].process.pid)
                          for _ in range(args.reps)]
                rate = n * args.steps * args.rows * args.tokens / statistics.median(r[0] for r in rounds)
                print(f"reference: one tenant, {n} x {args.rows} rows in one request: {rate:.0f} tok/s, "
                      f"server CPU s per step {statistics.median(r[1] for r in rounds) / args.steps:.3f}, "
                      f"client {statistics.median(r[2] for r in rounds) / args.steps:.3f}", flush=True)
            # The ceiling: the same comparison in this process, without HTTP or the lane (the
            # servers idle meanwhile). Through the SDK the ratio cannot exceed it.
            engine = Engine([BaseModelSpec(MODEL, str(model_dir), max_model_len=args.rows * args.tokens + 1)],
                            max_batch_tokens=max(8192, max(ns) * args.rows * args.tokens))
            for n in ns:
                t = bench_engine(engine, MODEL, n, args.rows, args.tokens, args.reps)
                print(f"ceiling, in process: {n} runs one at a time {t['one_wall'] * 1000:.1f} ms, batched "
                      f"{t['batched_wall'] * 1000:.1f} ms: {t['one_wall'] / t['batched_wall']:.2f}x", flush=True)
        finally:
            for srv in servers.values():
                srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--via", default="sdk", choices=["sdk", "engine"],
                        help="sdk: two live servers through the tinker SDK (default); engine: in-process")
    parser.add_argument("--runs", default="1,2,4,8", help="comma-separated numbers of runs (default 1,2,4,8)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per row (default 128)")
    parser.add_argument("--rows", type=int, default=1, help="rows (data) per request (default 1)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per side (default 5)")
    parser.add_argument("--steps", type=int, default=4, help="sdk: steps per tenant per round (default 4)")
    parser.add_argument("--baseline", default="", metavar="DIR",
                        help="sdk: also a batched server running the code tree in DIR (e.g. `git archive "
                             "<commit> | tar -x -C DIR`), a third side in the same alternation")
    parser.add_argument("--size", default="small", choices=sorted(SIZES), help="built-in model size")
    parser.add_argument("--threads", type=int, default=0, help="engine: torch CPU threads (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.via == "sdk":
        logging.getLogger("tinker").setLevel(logging.ERROR)
        bench_sdk(args)
        return
    import torch

    if args.threads:
        cpu_tuning.set_training_threads(args.threads)  # the engine's training threads, not only this one's

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", SIZES[args.size])
        model = "bench"
        engine = Engine([BaseModelSpec(model, str(model_dir), max_model_len=args.tokens + 1)],
                        max_batch_tokens=max(8192, 8 * args.rows * args.tokens))
        print(f"model {args.size} on {engine.host(model).device}, torch threads {cpu_tuning.TRAINING_THREADS}, "
              f"{args.rows} x {args.tokens} tokens per run, median of {args.reps}")
        for n in (int(x) for x in args.runs.split(",")):
            t = bench_engine(engine, model, n, args.rows, args.tokens, args.reps)
            print(f"runs {n:2d}: wall one at a time {t['one_wall'] * 1000:7.1f} ms, batched "
                  f"{t['batched_wall'] * 1000:7.1f} ms, speed-up {t['one_wall'] / t['batched_wall']:4.2f}x | "
                  f"CPU {t['one_cpu'] * 1000:7.1f} ms vs {t['batched_cpu'] * 1000:7.1f} ms, "
                  f"{t['one_cpu'] / t['batched_cpu']:4.2f}x", flush=True)


if __name__ == "__main__":
    main()
