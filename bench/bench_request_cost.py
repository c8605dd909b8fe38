"""What one API request costs the server: latency and server CPU time, two checkouts side by side.

    python bench/bench_request_cost.py [--code OTHER_CHECKOUT] [--rounds 4] [--requests 40]

Starts one ``tuft`` server from this checkout and, with ``--code``, one from
another checkout (e.g. the main branch) on the built-in tiny model, then
alternates rounds between them (A, B, A, B: load from other work hits both
alike). Each round sends, one at a time, ``--requests`` of each of:

* ``session_heartbeat`` (a sync DRF view that writes one row);
* ``retrieve_future`` on an already finished operation (the long poll's
  ready-result path);

first with the server otherwise idle, then while a client keeps its training
lane busy (forward_backward + optim_step in a loop, as the other tenants of a
loaded server would). Prints p50/p99 latency and the server process's CPU time
per request (utime + stime from /proc, so it counts every thread the request
used, whatever the machine's load).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TINKER_TELEMETRY", "0")

MODEL = "tuft/tiny-qwen3"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    key: str = ""
    figures: dict[str, list[float]] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)

    def post(self, path: str, body: object = None, content: bytes | None = None, timeout: float = 120) -> httpx.Response:
        # One kept-alive connection per thread, as the SDK keeps its connections.
        http = getattr(self._local, "http", None)
        if http is None:
            http = self._local.http = httpx.Client(base_url=f"{self.url}/api/v1/", timeout=timeout)
        headers = {"X-API-Key": self.key}
        if content is not None:
            headers["Content-Type"] = "application/x-protobuf"
            return http.post(path, content=content, headers=headers)
        return http.post(path, json=body, headers=headers)

    def wait(self, request_id: str) -> httpx.Response:
        while True:
            r = self.post("retrieve_future", {"request_id": request_id, "allow_metadata_only": False})
            if r.status_code != 200 or not r.headers.get("content-type", "").startswith("application/json") \
                    or r.json().get("type") != "try_again":
                return r


def start(name: str, code: Path, home: Path, model_config: Path) -> Server:
    from tests.conftest import free_port

    home.mkdir(parents=True)
    port = free_port()
    env = {**os.environ, "TUFT_HOME": str(home), "TUFT_MODEL_CONFIG": str(model_config),
           "DJANGO_SETTINGS_MODULE": "tuft_project.settings", "PYTHONUNBUFFERED": "1"}
    env.pop("DATABASE_URL", None)
    log = open(home / "server.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "tuft_project.cli", "--port", str(port), "--home", str(home),
                                "--model-config", str(model_config), "--no-dev-key"],
                               env=env, cwd=code, stdout=log, stderr=subprocess.STDOUT)
    server = Server(name, f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/api/v1/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        raise RuntimeError(f"{name} did not start: see {home / 'server.log'}")
    out = subprocess.run([sys.executable, "manage.py", "create_tenant", "bench"], env=env, cwd=code,
                         capture_output=True, text=True, check=True)
    server.key = out.stdout.strip().splitlines()[-1]
    return server


def new_run(server: Server) -> tuple[str, str]:
    session = server.post("create_session", {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"}).json()
    created = server.post("create_model", {"session_id": session["session_id"], "model_seq_id": 0,
                                           "base_model": MODEL, "lora_config": {"rank": 4},
                                           "type": "create_model"}).json()["request_id"]
    return session["session_id"], server.wait(created).json()["model_id"]


class Trainer:
    """Keeps a server's training lane busy: forward_backward + optim_step on its own run, in a loop."""

    def __init__(self, server: Server, vocab: int) -> None:
        from tests.api.helpers import datum, proto_forward_backward

        self.server, self.stop = server, threading.Event()
        _, self.model_id = new_run(server)
        rng = random.Random(0)
        rows = [[rng.randrange(2, vocab) for _ in range(65)] for _ in range(4)]
        self.data = [datum(r[:-1], r[1:]) for r in rows]
        self.proto = proto_forward_backward
        self.seq = 1
        self.thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self.stop.is_set():
            fb = self.server.post("forward_backward", content=self.proto(self.model_id, self.seq, self.data))
            opt = self.server.post("optim_step", {"model_id": self.model_id, "seq_id": self.seq + 1,
                                                  "type": "optim_step", "adam_params": {"learning_rate": 1e-4}})
            self.seq += 2
            self.server.wait(fb.json()["request_id"])
            self.server.wait(opt.json()["request_id"])

    def __enter__(self) -> "Trainer":
        self.stop.clear()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        time.sleep(2)  # the lane is computing by now
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=300)


def measure(server: Server, label: str, send: Callable[[], httpx.Response], requests: int) -> None:
    latencies = []
    cpu0 = cpu_seconds(server.process.pid)
    for _ in range(requests):
        t0 = time.perf_counter()
        r = send()
        latencies.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text[:200]
    cpu = cpu_seconds(server.process.pid) - cpu0
    server.figures.setdefault(label, []).extend(latencies)
    server.figures.setdefault(label + " cpu", []).append(cpu / requests)


def one_round(server: Server, session_id: str, ready: str, requests: int, busy: bool) -> None:
    tag = "busy lane" if busy else "idle"
    heartbeat = lambda: server.post("session_heartbeat", {"session_id": session_id, "type": "session_heartbeat"})  # noqa: E731
    retrieve = lambda: server.post("retrieve_future", {"request_id": ready, "allow_metadata_only": False})  # noqa: E731
    measure(server, f"heartbeat, {tag}", heartbeat, requests)
    measure(server, f"ready retrieve_future, {tag}", retrieve, requests)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--code", type=Path, help="another checkout to compare with (e.g. the main branch)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--requests", type=int, default=40, help="requests of each kind per round")
    args = p.parse_args()

    from engine.tiny_model import SIZES, build_tiny_model
    from tests.conftest import write_models_yaml

    threading.Timer(3600, lambda: os._exit(3)).start()  # bounded whatever happens
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        config = write_models_yaml(home / "models.yaml", build_tiny_model(home / "model", SIZES["tiny"]))
        codes = [("this checkout", ROOT)] + ([(f"{args.code}", args.code.resolve())] if args.code else [])
        servers = [start(name, code, home / f"server{i}", config) for i, (name, code) in enumerate(codes)]
        try:
            setups = []
            for server in servers:
                session_id, model_id = new_run(server)
                done = server.post("optim_step", {"model_id": model_id, "seq_id": 1, "type": "optim_step",
                                                  "adam_params": {"learning_rate": 1e-4}}).json()["request_id"]
                server.wait(done)
                setups.append((server, session_id, done, Trainer(server, SIZES["tiny"].vocab_size)))
            for r in range(args.rounds):
                for server, session_id, done, trainer in setups:
                    one_round(server, session_id, done, args.requests, busy=False)
                for server, session_id, done, trainer in setups:
                    with trainer:
                        one_round(server, session_id, done, args.requests, busy=True)
                print(f"round {r + 1}/{args.rounds} done", flush=True)
        finally:
            for server in servers:
                server.process.terminate()
                server.process.wait(timeout=60)
    print(f"{args.rounds} alternating rounds x {args.requests} requests of each kind, one at a time; "
          f"load average now {os.getloadavg()[0]:.1f}")
    print(f"{'server':<28} {'request':<36} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/request':>15}")
    for server in servers:
        for label, samples in server.figures.items():
            if label.endswith(" cpu"):
                continue
            # With the lane busy the process's CPU time is mostly training: not shown.
            cpu = f"{statistics.mean(server.figures[label + ' cpu']) * 1000:.2f}" if "idle" in label else "-"
            print(f"{server.name[-28:]:<28} {label:<36} {pct(samples, 0.5) * 1000:8.1f} "
                  f"{pct(samples, 0.99) * 1000:8.1f} {cpu:>15}")
    os._exit(0)


if __name__ == "__main__":
    main()
