"""Isolation under load: a trainer's step time with and without another tenant flooding samples.

    python bench/bench_isolation.py [--rounds 3] [--steps 4] [--size small] [--inflight 4]
                                    [--max-model-len 256] [--batch 4] [--seq 64] [--mode embedded|redis]

Starts one embedded `tuft` server (HF sampler, the default), or with ``--mode
redis`` an API server plus one RQ worker, with two tenants:

* the **trainer** loops forward_backward + optim_step (``--batch`` rows of
  ``--seq`` tokens, rank 8, both submitted at once as the SDK is meant to be
  used) and records each step's wall time, submission to both results;
* the **flooder** keeps ``--inflight`` maximal-but-legal sample requests in
  flight: ``num_samples`` at the server's limit (TUFT_MAX_NUM_SAMPLES, 128), an
  8-token prompt and ``max_tokens`` filling the rest of ``max_model_len``, no
  stop sequence (every row decodes to the end).

Quiet and flooded phases alternate in one run (quiet, flood, quiet, flood, ...,
``--rounds`` of each): a flooded phase starts once the flood has its requests in
flight and a decode running, and ends by draining the flood, so the next quiet
phase is really quiet. Prints the trainer's median step time in each condition,
their ratio (the target is at most 2x), every step's time, the samples the
flood got through meanwhile, and the CPU seconds per wall second of the process
that runs the model (the server, or the worker) in each condition.
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
from concurrent.futures import Future
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TINKER_TELEMETRY", "0")

MODEL = "tuft/tiny-qwen3"
PROMPT_LEN = 8
WAIT_S = 1800  # bounded: one result of a loaded machine's flood can take minutes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Flood:
    """One tenant keeping ``inflight`` maximal sample requests outstanding until stopped."""

    def __init__(self, url: str, key: str, inflight: int, num_samples: int, max_tokens: int, vocab: int) -> None:
        import tinker
        from tinker import types

        self._client = tinker.ServiceClient(base_url=url, api_key=key).create_sampling_client(
            base_model=MODEL).result(timeout=WAIT_S)
        rng = random.Random(1)
        self._prompt = types.ModelInput.from_ints([rng.randrange(2, vocab) for _ in range(PROMPT_LEN)])
        # No stop sequence: every row decodes all max_tokens (the costliest legal request).
        self._params = types.SamplingParams(max_tokens=max_tokens, temperature=1.0, stop=[])
        self._num_samples = num_samples
        self._inflight = inflight
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.completed = 0  # sample requests answered (each num_samples sequences)

    def _submit(self) -> Future:
        return self._client.sample(self._prompt, self._num_samples, self._params)

    def _loop(self) -> None:
        pending = [self._submit() for _ in range(self._inflight)]
        while pending:
            pending.pop(0).result(timeout=WAIT_S)
            self.completed += 1
            if not self._stop.is_set():
                pending.append(self._submit())

    def warm_up(self) -> None:
        """One small request, not counted: the sampler is created on the first one."""
        from tinker import types

        self._client.sample(self._prompt, 1, types.SamplingParams(max_tokens=2)).result(timeout=WAIT_S)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="flood", daemon=True)
        self._thread.start()

    def drain(self) -> None:
        """Stop submitting and wait until every request in flight was answered."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(WAIT_S)
        if self._thread.is_alive():
            raise RuntimeError(f"the flood did not drain within {WAIT_S} s")


def make_data(batch: int, seq: int, vocab: int):  # -> list[types.Datum]
    from tinker import types

    rng = random.Random(0)
    rows = [[rng.randrange(2, vocab) for _ in range(seq + 1)] for _ in range(batch)]
    return [types.Datum(model_input=types.ModelInput.from_ints(r[:-1]),
                        loss_fn_inputs={"target_tokens": types.TensorData(data=r[1:], dtype="int64",
                                                                          shape=[seq])}) for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="quiet and flooded phases each (alternating)")
    p.add_argument("--steps", type=int, default=4, help="trainer steps timed per phase")
    p.add_argument("--size", default="small", help="built-in model size (tiny | small)")
    p.add_argument("--inflight", type=int, default=4, help="flood requests kept in flight")
    p.add_argument("--num-samples", type=int, default=128, help="per flood request (the server's limit: 128)")
    p.add_argument("--max-model-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--mode", choices=["embedded", "redis"], default="embedded",
                   help="embedded server, or API + one RQ worker (local Redis and PostgreSQL)")
    p.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="extra server settings")
    args = p.parse_args()

    import tinker
    from tinker import types

    from engine.tiny_model import SIZES, build_tiny_model
    from tests.conftest import start_server, write_models_yaml
    from tests.distributed.cluster import Cluster, postgres_database

    load = os.getloadavg()[0]
    max_tokens = args.max_model_len - PROMPT_LEN
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        size = SIZES[args.size]
        model_dir = build_tiny_model(home / "model", size)
        env = dict(kv.split("=", 1) for kv in args.env)
        if args.mode == "embedded":
            server = start_server(home / "server", write_models_yaml(home / "models.yaml", model_dir,
                                                                     args.max_model_len), extra_env=env or None)
            url, stop, pid = server.url, server.stop, server.process.pid
            trainer_key, flood_key = server.create_tenant("trainer"), server.create_tenant("flooder")
        else:
            cluster = Cluster(home=home / "redis", model_dir=model_dir, redis_url="redis://127.0.0.1:6379/11",
                              database_url=postgres_database(), extra_env=env)
            cluster.models_yaml.write_text(cluster.models_yaml.read_text().replace(
                "max_model_len: 256", f"max_model_len: {args.max_model_len}"))
            cluster.start_api()
            cluster.start_worker("bench")
            trainer_key, flood_key = cluster.create_tenant("trainer"), cluster.create_tenant("flooder")
            cluster.wait_workers("bench")
            url, stop, pid = cluster.url, cluster.stop, cluster.workers["bench"].pid
        try:
            training = tinker.ServiceClient(base_url=url, api_key=trainer_key).create_lora_training_client(
                base_model=MODEL, rank=8, seed=0).result(timeout=WAIT_S)
            data = make_data(args.batch, args.seq, size.vocab_size)
            adam = types.AdamParams(learning_rate=1e-4)
            flood = Flood(url, flood_key, args.inflight, args.num_samples, max_tokens, size.vocab_size)

            def step() -> float:
                start = time.perf_counter()
                fb, opt = training.forward_backward(data, "cross_entropy"), training.optim_step(adam)
                fb.result(timeout=WAIT_S)
                opt.result(timeout=WAIT_S)
                return time.perf_counter() - start

            step()  # warm-up (adapter, first pass), not timed
            flood.warm_up()
            times: dict[str, list[float]] = {"quiet": [], "flood": []}
            cpu: dict[str, float] = {"quiet": 0.0, "flood": 0.0}
            wall: dict[str, float] = {"quiet": 0.0, "flood": 0.0}
            samples_during = 0
            for r in range(args.rounds):
                for phase in ("quiet", "flood"):
                    if phase == "flood":
                        before = flood.completed
                        flood.start()
                        time.sleep(2.0)  # let the requests arrive and the first decode start
                    c0, w0 = cpu_seconds(pid), time.perf_counter()
                    phase_times = [step() for _ in range(args.steps)]
                    cpu[phase] += cpu_seconds(pid) - c0
                    wall[phase] += time.perf_counter() - w0
                    if phase == "flood":
                        samples_during += flood.completed - before
                        flood.drain()
                    times[phase] += phase_times
                    print(f"round {r + 1} {phase:>5}: " + " ".join(f"{t:.2f}" for t in phase_times) + " s",
                          flush=True)
        finally:
            stop()

    quiet, flooded = statistics.median(times["quiet"]), statistics.median(times["flood"])
    print(f"{args.mode} mode; model {args.size} (max_model_len {args.max_model_len}); trainer {args.batch}x{args.seq} tokens, "
          f"rank 8; flood {args.inflight} in flight x {args.num_samples} samples x {max_tokens} new tokens; "
          f"load average before: {load:.2f}")
    print(f"trainer median step: quiet {quiet:.3f} s, flooded {flooded:.3f} s, ratio {flooded / quiet:.2f}x "
          f"(target <= 2x); max flooded {max(times['flood']):.3f} s")
    print(f"flood requests answered during the flooded phases: {samples_during} "
          f"({samples_during * args.num_samples} sequences)")
    print(f"{args.mode} model process CPU s per wall s: " + ", ".join(f"{k} {cpu[k] / wall[k]:.2f}" for k in cpu))


if __name__ == "__main__":
    main()
