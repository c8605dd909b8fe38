"""Control plane under load: many concurrent SDK clients against one server.

    python bench/bench_load.py [--clients 100] [--duration 120] [--tenants 10] [--mode embedded|redis]

Starts a real server (``embedded``: one ``tuft`` process with its worker
threads; ``redis``: a ``tuft`` API server plus one ``manage.py tuft_worker`` on
the local Redis, namespace of its own), then for ``--duration`` seconds
(bounded: every client stops at the deadline, the warm-up is bounded by 40 minutes and the whole
run by 10 minutes more):

* ``--clients`` SDK clients (each its own ``ServiceClient`` and LoRA run on the
  built-in tiny model, spread over ``--tenants`` tenants and ``--processes``
  processes) loop
  ``forward_backward`` + ``optim_step`` on a 1x16-token batch;
* a probe (a process of its own) times ``retrieve_future`` on a *ready* result
  (its latest finished operation) with plain HTTP, every ``--probe-interval`` s.

Prints throughput (operations/s over the timed window), the submission-to-result
latency of the clients' operations, and the ready-result latency (p50/p99/max).
Compare figures within one machine state only: other load skews all of them.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TINKER_TELEMETRY", "0")

MODEL = "tuft/tiny-qwen3"
# Bound on the warm-up (every client's run created and one step done): on a loaded
# 2-core machine 100 clients took over 15 minutes to get there.
WARMUP_S = 2400


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_data(vocab: int, seed: int, tokens: int = 16) -> list:
    from tinker import types

    rng = random.Random(seed)
    row = [rng.randrange(2, vocab) for _ in range(tokens + 1)]
    return [types.Datum(model_input=types.ModelInput.from_ints(row[:-1]),
                        loss_fn_inputs={"target_tokens": types.TensorData(data=row[1:], dtype="int64",
                                                                          shape=[tokens])})]


class Figures:
    """What the threads measured; appended to under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.op_latency: list[float] = []  # submission -> result, seconds, within the timed window
        self.ready_latency: list[float] = []  # retrieve_future of a finished operation, seconds
        self.ready_at: list[float] = []  # when each of those was sent (CLOCK_MONOTONIC)
        self.errors: list[str] = []
        self.clients_ready = 0


def client_loop(url: str, key: str, vocab: int, seed: int, start: threading.Event, deadline: list[float],
                figures: Figures) -> None:
    import tinker
    from tinker import types

    try:
        training = tinker.ServiceClient(base_url=url, api_key=key).create_lora_training_client(
            base_model=MODEL, rank=4, seed=seed).result(timeout=WARMUP_S)
        data = make_data(vocab, seed)
        adam = types.AdamParams(learning_rate=1e-3)
        training.forward_backward(data, "cross_entropy").result(timeout=WARMUP_S)  # warm-up, not timed
        with figures.lock:
            figures.clients_ready += 1
        start.wait()
        while time.monotonic() < deadline[0]:
            for call in (lambda: training.forward_backward(data, "cross_entropy"), lambda: training.optim_step(adam)):
                t0 = time.monotonic()
                call().result(timeout=600)
                t1 = time.monotonic()
                if t1 <= deadline[0]:
                    with figures.lock:
                        figures.op_latency.append(t1 - t0)
    except Exception as exc:  # reported at the end; one client's failure must not stop the others
        with figures.lock:
            figures.errors.append(f"{type(exc).__name__}: {exc}")


def _until_done(http: httpx.Client, request_id: str) -> httpx.Response:
    while True:
        r = http.post("/api/v1/retrieve_future", json={"request_id": request_id, "allow_metadata_only": False})
        if r.status_code != 200 or r.json().get("type") != "try_again":
            return r


def probe_loop(url: str, key: str, interval: float, start: threading.Event, deadline: list[float],
               figures: Figures) -> None:
    """Time plain-HTTP retrieve_future calls on ready results, every ``interval`` seconds.

    Plain HTTP (the protocol's create_session / create_model / optim_step) so that
    the probe knows each future's request id. A second thread keeps finishing
    new optim_steps (they queue behind the clients' work); the probe always asks
    for the latest finished one.
    """
    latest: list[str] = []
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as http:
            session_id = http.post("/api/v1/create_session", json={"tags": ["probe"], "user_metadata": {},
                                                                    "sdk_version": "0.38.0"}).json()["session_id"]
            created = http.post("/api/v1/create_model", json={
                "session_id": session_id, "model_seq_id": 0, "base_model": MODEL, "lora_config": {"rank": 4},
                "type": "create_model"}).json()["request_id"]
            model_id = _until_done(http, created).json()["model_id"]
            latest.append(created)

            def finish_steps() -> None:
                with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as steps:
                    seq = 1
                    while time.monotonic() < deadline[0]:
                        request_id = steps.post("/api/v1/optim_step", json={
                            "model_id": model_id, "seq_id": seq, "type": "optim_step",
                            "adam_params": {"learning_rate": 1e-3}}).json()["request_id"]
                        seq += 1
                        if _until_done(steps, request_id).status_code == 200:
                            latest.append(request_id)

            start.wait()
            threading.Thread(target=finish_steps, daemon=True).start()
            while time.monotonic() < deadline[0]:
                request_id = latest[-1]
                t0 = time.monotonic()
                r = http.post("/api/v1/retrieve_future", json={"request_id": request_id, "allow_metadata_only": False})
                elapsed = time.monotonic() - t0
                if r.status_code != 200 or r.json().get("type") == "try_again":
                    raise RuntimeError(f"a ready result was not answered: {r.status_code} {r.text[:200]}")
                if time.monotonic() <= deadline[0]:
                    with figures.lock:
                        figures.ready_latency.append(elapsed)
                        figures.ready_at.append(t0)
                time.sleep(interval)
    except Exception as exc:
        with figures.lock:
            figures.errors.append(f"probe: {type(exc).__name__}: {exc}")


def process_main(role: str, url: str, keys: list[str], first: int, count: int, vocab: int, probe_interval: float,
                 ready: Any, start: Any, deadline: Any, results: Any) -> None:
    """One load process: ``count`` SDK clients, or the probe. Reports its figures on ``results``."""
    logging.getLogger("tinker").setLevel(logging.ERROR)  # one "try_again" warning per long poll otherwise
    figures = Figures()
    local_start = threading.Event()
    local_deadline = [float("inf")]
    if role == "probe":
        threads = [threading.Thread(target=probe_loop, args=(url, keys[0], probe_interval, local_start,
                                                             local_deadline, figures), daemon=True)]
    else:
        threads = [threading.Thread(target=client_loop, args=(url, keys[i % len(keys)], vocab, i, local_start,
                                                              local_deadline, figures), daemon=True)
                   for i in range(first, first + count)]
    for t in threads:
        t.start()
    warmup_until = time.monotonic() + WARMUP_S
    while (role == "clients" and figures.clients_ready + len(figures.errors) < count
           and time.monotonic() < warmup_until):
        time.sleep(0.5)
    with ready.get_lock():
        ready.value += 1
    start.wait()
    local_deadline[0] = deadline.value  # CLOCK_MONOTONIC is shared by the processes of one machine
    local_start.set()
    for t in threads:
        t.join(timeout=max(1.0, deadline.value + 300 - time.monotonic()))
    results.put({"op_latency": figures.op_latency, "ready_latency": figures.ready_latency, "ready_at": figures.ready_at,
                 "errors": figures.errors, "clients_ready": figures.clients_ready})
    results.close()
    results.join_thread()  # the figures are sent before the process ends
    os._exit(0)  # SDK clients keep heartbeat threads alive


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) that process ``pid`` has used so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_load(url: str, keys: list[str], clients: int, duration: float, vocab: int, probe_interval: float,
             processes: int, server_pids: list[int]) -> dict:
    """Clients spread over ``processes`` processes and the probe in one of its own, so that the
    load generator's own GIL does not inflate the latencies it measures."""
    ctx = multiprocessing.get_context("spawn")
    ready, start, deadline, results = ctx.Value("i", 0), ctx.Event(), ctx.Value("d", 0.0), ctx.Queue()
    per = -(-clients // processes)
    roles = [("clients", first, min(per, clients - first)) for first in range(0, clients, per)] + [("probe", 0, 0)]
    procs = [ctx.Process(target=process_main, args=(role, url, keys, first, count, vocab, probe_interval, ready,
                                                    start, deadline, results), daemon=True)
             for role, first, count in roles]
    for p in procs:
        p.start()
    warmup_until = time.monotonic() + WARMUP_S + 60
    while ready.value < len(procs) and time.monotonic() < warmup_until:
        time.sleep(0.5)
    deadline.value = time.monotonic() + duration
    print(f"warm: {ready.value - 1} client process(es) ready; timing {duration:.0f} s", flush=True)
    # CPU used during the timed window by the server and by the load generator's own
    # processes: on a small machine the clients compete with the server for the cores.
    groups = {"server": server_pids, "clients": [p.pid for p in procs[:-1]], "probe": [procs[-1].pid]}
    cpu_before = {name: sum(map(cpu_seconds, pids)) for name, pids in groups.items()}
    start.set()
    time.sleep(max(0.0, deadline.value - time.monotonic()))
    cpu = {name: sum(map(cpu_seconds, pids)) - cpu_before[name] for name, pids in groups.items()}
    merged = Figures()
    for _ in procs:
        part = results.get(timeout=max(1.0, deadline.value + 400 - time.monotonic()))
        merged.op_latency += part["op_latency"]
        merged.ready_latency += part["ready_latency"]
        merged.ready_at += part["ready_at"]
        merged.errors += part["errors"]
        merged.clients_ready += part["clients_ready"]
    print(f"{merged.clients_ready} clients warmed up; timed {duration:.0f} s", flush=True)
    return {
        "ops_per_s": len(merged.op_latency) / duration,
        "ops": len(merged.op_latency),
        "op_p50": percentile(merged.op_latency, 0.50), "op_p99": percentile(merged.op_latency, 0.99),
        "ready_n": len(merged.ready_latency),
        "ready_p50": percentile(merged.ready_latency, 0.50), "ready_p99": percentile(merged.ready_latency, 0.99),
        "ready_max": max(merged.ready_latency, default=float("nan")),
        # The slow probes and when they were sent (seconds into the timed window): bursts show up here.
        "ready_slow": sorted((round(at - (deadline.value - duration), 1), round(latency * 1000))
                             for at, latency in zip(merged.ready_at, merged.ready_latency) if latency > 0.1),
        "errors": merged.errors,
        "cpu_share": {name: used / duration for name, used in cpu.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--duration", type=float, default=120.0, help="seconds of timed load")
    p.add_argument("--tenants", type=int, default=10, help="tenants the clients are spread over")
    p.add_argument("--mode", choices=["embedded", "redis"], default="embedded")
    p.add_argument("--probe-interval", type=float, default=0.2, help="seconds between ready-result probes")
    p.add_argument("--processes", type=int, default=4, help="processes the clients are spread over")
    args = p.parse_args()

    from engine.tiny_model import SIZES, build_tiny_model
    from tests.conftest import start_server, write_models_yaml
    from tests.distributed.cluster import Cluster, redis_reachable

    # The whole run is bounded even if the server wedges.
    bound = threading.Timer(args.duration + WARMUP_S + 600, lambda: os._exit(3))
    bound.daemon = True  # an error before the end still ends the process
    bound.start()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model_dir = build_tiny_model(home / "model", SIZES["tiny"])
        if args.mode == "embedded":
            server = start_server(home / "server", write_models_yaml(home / "models.yaml", model_dir))
            url, stop, create_tenant = server.url, server.stop, server.create_tenant
            server_pids = [server.process.pid]
        else:
            if not redis_reachable("redis://127.0.0.1:6379/10"):
                sys.exit("Redis is not running at 127.0.0.1:6379")
            cluster = Cluster(home=home / "redis", model_dir=model_dir, redis_url="redis://127.0.0.1:6379/10")
            cluster.start_api()
            cluster.start_worker("bench")
            cluster.wait_workers("bench")
            url, stop, create_tenant = cluster.url, cluster.stop, cluster.create_tenant
            server_pids = [p.pid for p in [cluster.api, *cluster.workers.values()] if p is not None]
        try:
            keys = [create_tenant(f"t{i}") for i in range(args.tenants)]
            figures = run_load(url, keys, args.clients, args.duration, SIZES["tiny"].vocab_size, args.probe_interval,
                               args.processes, server_pids)
        finally:
            stop()
    print(f"mode {args.mode}; {args.clients} SDK clients over {args.tenants} tenants; {args.duration:.0f} s timed; "
          f"load average before: {load:.2f}")
    print(f"throughput: {figures['ops_per_s']:.2f} operations/s ({figures['ops']} operations)")
    print(f"operation latency (submit -> result): p50 {figures['op_p50']:.3f} s, p99 {figures['op_p99']:.3f} s")
    print(f"ready-result retrieve_future ({figures['ready_n']} probes): p50 {figures['ready_p50'] * 1000:.1f} ms, "
          f"p99 {figures['ready_p99'] * 1000:.1f} ms, max {figures['ready_max'] * 1000:.1f} ms")
    print(f"ready-result probes over 100 ms (s into the window, ms): {figures['ready_slow']}")
    shares = ", ".join(f"{name} {share * 100:.0f}%" for name, share in figures["cpu_share"].items())
    print(f"CPU during the timed window (100% = one core; {os.cpu_count()} cores): {shares}")
    if figures["errors"]:
        print(f"{len(figures['errors'])} client error(s), first: {figures['errors'][0]}")
    os._exit(0)  # SDK clients keep heartbeat threads alive; the figures are printed


if __name__ == "__main__":
    main()
