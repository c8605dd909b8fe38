"""Training throughput: the same K LoRA steps through the SDK over HTTP vs peft in-process.

    python bench/bench_training.py [--steps 10] [--rounds 4] [--batch 8] [--seq 128] [--size small]

Builds the "small" built-in model (~5M parameters), starts a real `tuft` server
on a free port, and times K forward_backward + optim_step steps with the
unmodified tinker SDK (pipelined as the SDK is meant to be used:
``forward_backward_async`` and ``optim_step_async``, then ``.result()``) against
the same K steps in this process with plain peft + torch AdamW. The two sides
alternate in ``--rounds`` rounds (SDK, in-process, SDK, ...; K/rounds steps
each) so that load from other work on the machine hits both alike, and the
ratio of the summed times is printed. Both sides use the same LoRA config
(rank 8, alpha 16, all linear layers + lm_head) and the same data, and by default
the same malloc settings as the server (``engine.cpu_tuning.keep_freed_memory``:
~25 % faster CPU steps on either side), so that the ratio is the cost of the
server path alone; ``--plain-malloc`` leaves this process's allocator as a plain
training script has it.
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


class SdkSide:
    """One training client on the server; ``steps(k)`` times k pipelined steps."""

    def __init__(self, url: str, key: str, model_name: str, rows: list[list[int]], lr: float) -> None:
        import tinker
        from tinker import types

        client = tinker.ServiceClient(base_url=url, api_key=key)
        self.training = client.create_lora_training_client(base_model=model_name, rank=8, seed=0).result(timeout=120)
        self.data = [
            types.Datum(model_input=types.ModelInput.from_ints(r[:-1]),
                        loss_fn_inputs={"target_tokens": types.TensorData(data=r[1:], dtype="int64",
                                                                          shape=[len(r) - 1])})
            for r in rows
        ]
        self.adam = types.AdamParams(learning_rate=lr)
        self.steps(1)  # warm-up (loads the base model, first allocations), not timed

    def steps(self, k: int) -> tuple[float, list[float]]:
        losses = []
        start = time.perf_counter()
        for _ in range(k):
            fb = self.training.forward_backward(self.data, "cross_entropy")
            opt = self.training.optim_step(self.adam)
            losses.append(fb.result(timeout=300).metrics["loss:sum"])
            opt.result(timeout=300)
        return time.perf_counter() - start, losses


class PeftSide:
    """The same steps with plain peft + torch AdamW in this process."""

    def __init__(self, model_dir: Path, rows: list[list[int]], lr: float) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"])
        self.model = get_peft_model(base, config)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
        self.ids = torch.tensor([r[:-1] for r in rows])
        self.targets = torch.tensor([r[1:] for r in rows])
        self.steps(1)  # warm-up, as on the server side

    def _step(self) -> float:
        import torch

        logits = self.model(input_ids=self.ids, attention_mask=torch.ones_like(self.ids)).logits.float()
        lp = torch.log_softmax(logits, -1).gather(-1, self.targets.unsqueeze(-1)).squeeze(-1)
        loss = -lp.sum()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def steps(self, k: int) -> tuple[float, list[float]]:
        start = time.perf_counter()
        losses = [self._step() for _ in range(k)]
        return time.perf_counter() - start, losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=4, help="alternating SDK / in-process rounds")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--size", default="small", help="built-in model size (tiny | small)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--plain-malloc", action="store_true",
                   help="in-process side with glibc's default malloc thresholds (the server raises them)")
    args = p.parse_args()

    from engine import cpu_tuning

    if not args.plain_malloc:
        cpu_tuning.keep_freed_memory()

    from engine.tiny_model import SIZES, build_tiny_model
    from tests.conftest import start_server, write_models_yaml

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model_dir = build_tiny_model(home / "model", SIZES[args.size])
        n_params = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) // 4
        rows = make_batch(args.batch, args.seq, SIZES[args.size].vocab_size)
        server = start_server(home / "server", write_models_yaml(home / "models.yaml", model_dir, 4096))
        sdk_s = peft_s = 0.0
        sdk_losses: list[float] = []
        peft_losses: list[float] = []
        try:
            sdk = SdkSide(server.url, server.create_tenant("bench"), "tuft/tiny-qwen3", rows, args.lr)
            peft = PeftSide(model_dir, rows, args.lr)
            per_round = max(1, args.steps // args.rounds)
            for r in range(args.rounds):
                t, losses = sdk.steps(per_round)
                sdk_s, sdk_losses = sdk_s + t, sdk_losses + losses
                t2, losses = peft.steps(per_round)
                peft_s, peft_losses = peft_s + t2, peft_losses + losses
                print(f"round {r + 1}: SDK {t:.2f} s, in-process {t2:.2f} s, ratio {t / t2:.2f}", flush=True)
        finally:
            server.stop()

    steps = per_round * args.rounds
    tokens = steps * args.batch * args.seq
    print(f"model: ~{n_params / 1e6:.1f}M parameters ({args.size}); batch {args.batch}x{args.seq}; {steps} steps "
          f"in {args.rounds} alternating rounds; in-process malloc: {'plain' if args.plain_malloc else 'as the server'}")
    print(f"SDK over HTTP : {sdk_s:7.2f} s  ({tokens / sdk_s:8.0f} tokens/s)  loss {sdk_losses[0]:.1f} -> {sdk_losses[-1]:.1f}")
    print(f"peft in-proc  : {peft_s:7.2f} s  ({tokens / peft_s:8.0f} tokens/s)  loss {peft_losses[0]:.1f} -> {peft_losses[-1]:.1f}")
    print(f"ratio SDK/peft: {sdk_s / peft_s:.2f}x the in-process time")


if __name__ == "__main__":
    main()
