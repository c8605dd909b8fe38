"""Training throughput: the same K LoRA steps through the SDK over HTTP vs peft in-process.

    python bench/bench_training.py [--steps 10] [--batch 8] [--seq 128] [--size small]

Builds the "small" built-in model (~5M parameters), starts a real `tuft` server
on a free port, runs K forward_backward + optim_step steps with the unmodified
tinker SDK, then runs the same K steps in this process with plain peft + torch
AdamW, and prints both timings and their ratio (measured in one run, since
these machines are noisy). Both sides use the same LoRA config (rank 8, alpha
16, all linear layers + lm_head) and the same data.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TINKER_TELEMETRY", "0")


def make_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2, vocab) for _ in range(seq + 1)] for _ in range(batch)]


def bench_sdk(url: str, key: str, model_name: str, rows: list[list[int]], steps: int, lr: float) -> tuple[float, list[float]]:
    import tinker
    from tinker import types

    client = tinker.ServiceClient(base_url=url, api_key=key)
    training = client.create_lora_training_client(base_model=model_name, rank=8, seed=0).result(timeout=120)
    data = [
        types.Datum(model_input=types.ModelInput.from_ints(r[:-1]),
                    loss_fn_inputs={"target_tokens": types.TensorData(data=r[1:], dtype="int64", shape=[len(r) - 1])})
        for r in rows
    ]
    # One warm-up step (loads the base model, first allocations), not timed.
    training.forward_backward(data, "cross_entropy").result(timeout=300)
    training.optim_step(types.AdamParams(learning_rate=lr)).result(timeout=300)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        fb = training.forward_backward(data, "cross_entropy")
        opt = training.optim_step(types.AdamParams(learning_rate=lr))
        losses.append(fb.result(timeout=300).metrics["loss:sum"])
        opt.result(timeout=300)
    return time.perf_counter() - start, losses


def bench_peft(model_dir: Path, rows: list[list[int]], steps: int, lr: float) -> tuple[float, list[float]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"])
    model = get_peft_model(base, config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
    ids = torch.tensor([r[:-1] for r in rows])
    targets = torch.tensor([r[1:] for r in rows])

    def step() -> float:
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
        lp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        loss = -lp.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()  # warm-up, as on the server side
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(step())
    return time.perf_counter() - start, losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--size", default="small", help="built-in model size (tiny | small)")
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()

    from engine.tiny_model import SIZES, build_tiny_model
    from tests.conftest import start_server, write_models_yaml

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model_dir = build_tiny_model(home / "model", SIZES[args.size])
        n_params = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) // 4
        rows = make_batch(args.batch, args.seq, SIZES[args.size].vocab_size)
        server = start_server(home / "server", write_models_yaml(home / "models.yaml", model_dir, 4096))
        try:
            key = server.create_tenant("bench")
            sdk_s, sdk_losses = bench_sdk(server.url, key, "tuft/tiny-qwen3", rows, args.steps, args.lr)
        finally:
            server.stop()
        peft_s, peft_losses = bench_peft(model_dir, rows, args.steps, args.lr)

    tokens = args.steps * args.batch * args.seq
    print(f"model: ~{n_params / 1e6:.1f}M parameters ({args.size}); batch {args.batch}x{args.seq}; {args.steps} steps")
    print(f"SDK over HTTP : {sdk_s:7.2f} s  ({tokens / sdk_s:8.0f} tokens/s)  loss {sdk_losses[0]:.1f} -> {sdk_losses[-1]:.1f}")
    print(f"peft in-proc  : {peft_s:7.2f} s  ({tokens / peft_s:8.0f} tokens/s)  loss {peft_losses[0]:.1f} -> {peft_losses[-1]:.1f}")
    print(f"ratio SDK/peft: {sdk_s / peft_s:.2f}x the in-process time")


if __name__ == "__main__":
    main()
