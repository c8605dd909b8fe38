"""Memory: the server's resident size with 1 tenant's run loaded vs 8, and the cost of one tenant.

    python bench/bench_memory.py [--tenants 8] [--size small] [--rank 8] [--batch 4] [--seq 64]

Starts one embedded `tuft` server and reads its process's memory from /proc
(VmRSS: resident now; VmHWM: the peak so far) at three points:

1. idle: server up, no model loaded yet;
2. one tenant: its LoRA run created, one forward_backward + optim_step done
   (so its gradients and AdamW moments exist), through the SDK;
3. N tenants: N-1 more tenants did the same, one after the other, then all N
   stepped at once (their forward_backwards batched in one pass: the transient
   activations of a batched step).

Prints RSS(N) ÷ RSS(1), the measured per-tenant cost (RSS(N) - RSS(1)) / (N-1),
and what it should be: the adapter's parameters, counted on the same model in
this process, times 16 bytes (fp32 weight + gradient + two AdamW moments).
The peak is reset (/proc/PID/clear_refs) before the concurrent step: the peak
during it minus the resident size before it is the transient memory of the
batched step (activations kept for backward, logits).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TINKER_TELEMETRY", "0")

MODEL = "tuft/tiny-qwen3"
WAIT_S = 900
MIB = 2**20


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024 / MIB
    return values


def adapter_parameters(model_dir: Path, rank: int) -> int:
    """Trainable parameters of one run's adapter (as the SDK creates it: all targets)."""
    from engine.model_host import ModelHost
    from engine.types import BaseModelSpec, LoraSpec

    host = ModelHost(BaseModelSpec("count", str(model_dir), max_model_len=16))
    host.add_adapter("count", LoraSpec(rank=rank))
    return sum(p.numel() for p in host.adapter_parameters("count").values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tenants", type=int, default=8)
    p.add_argument("--size", default="small", help="built-in model size (tiny | small)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    args = p.parse_args()

    import tinker
    from tinker import types

    from engine.tiny_model import SIZES, build_tiny_model
    from tests.conftest import start_server, write_models_yaml

    size = SIZES[args.size]
    rng = random.Random(0)
    rows = [[rng.randrange(2, size.vocab_size) for _ in range(args.seq + 1)] for _ in range(args.batch)]
    data = [types.Datum(model_input=types.ModelInput.from_ints(r[:-1]),
                        loss_fn_inputs={"target_tokens": types.TensorData(data=r[1:], dtype="int64",
                                                                          shape=[args.seq])}) for r in rows]
    adam = types.AdamParams(learning_rate=1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model_dir = build_tiny_model(home / "model", size)
        params = adapter_parameters(model_dir, args.rank)
        server = start_server(home / "server", write_models_yaml(home / "models.yaml", model_dir, 256))
        pid = server.process.pid
        try:
            keys = [server.create_tenant(f"t{i}") for i in range(args.tenants)]
            figures = {"idle": memory(pid)}
            clients = []

            def step(client) -> None:
                fb, opt = client.forward_backward(data, "cross_entropy"), client.optim_step(adam)
                fb.result(timeout=WAIT_S)
                opt.result(timeout=WAIT_S)

            for i, key in enumerate(keys):
                client = tinker.ServiceClient(base_url=server.url, api_key=key).create_lora_training_client(
                    base_model=MODEL, rank=args.rank, seed=i).result(timeout=WAIT_S)
                clients.append(client)
                step(client)
                if i == 0:
                    figures["one"] = memory(pid)
            # Reset the peak (VmHWM) so it measures this batched step, not the model load.
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            figures["before_batched"] = memory(pid)
            threads = [threading.Thread(target=step, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(WAIT_S)
            figures["all"] = memory(pid)
        finally:
            server.stop()

    n = args.tenants
    one, every = figures["one"]["VmRSS"], figures["before_batched"]["VmRSS"]
    per_tenant = (every - one) / (n - 1)
    expected = params * 16 / MIB
    print(f"model {args.size}; rank {args.rank} on every target (attention, MLP, lm_head): {params:,} adapter "
          f"parameters; steps of {args.batch}x{args.seq} tokens")
    for name, label in (("idle", "idle, no model loaded"), ("one", "1 tenant's run loaded"),
                        ("before_batched", f"{n} tenants' runs loaded"),
                        ("all", f"after {n} tenants stepped at once")):
        print(f"{label:>34}: RSS {figures[name]['VmRSS']:7.1f} MiB, peak {figures[name]['VmHWM']:7.1f} MiB")
    print(f"RSS {n} tenants / 1 tenant: {every / one:.3f}")
    print(f"per-tenant cost: measured {per_tenant:.2f} MiB; adapter + gradient + AdamW moments "
          f"(16 B/parameter) {expected:.2f} MiB")
    print(f"transient of the batched {n}-tenant step (peak during it - resident before it): "
          f"{figures['all']['VmHWM'] - figures['before_batched']['VmRSS']:.1f} MiB")


if __name__ == "__main__":
    main()
