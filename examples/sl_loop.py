"""Supervised fine-tuning against a local TuFT, the shape of tinker-cookbook's ``sl_loop``.

Tokenize prompt/completion pairs with the model's own tokenizer, train a LoRA
with cross-entropy on the completion tokens only, then sample from the trained
adapter. Offline: runs on the built-in model (`bash scripts/serve.sh`).

    python examples/sl_loop.py [--steps 30] [--base-url URL] [--api-key tml-...]

The built-in model has random weights, so it learns these exact pairs
(memorisation) rather than anything general; the loss falls within ~20 steps.
"""

from __future__ import annotations

import argparse

from tinker import types

from _connect import add_connection_args, connect

# (prompt, completion) pairs in the built-in tokenizer's vocabulary.
PAIRS = [
    ("Question: what colour is the sky? Answer:", " blue"),
    ("Question: what colour is grass? Answer:", " green"),
    ("Question: two plus two? Answer:", " four"),
    ("Question: the opposite of hot? Answer:", " cold"),
]


def make_datum(tokenizer, prompt: str, completion: str) -> types.Datum:  # type: ignore[no-untyped-def]
    """Position i predicts token i+1; only completion tokens carry weight (as the cookbook's renderers do)."""
    prompt_tokens = tokenizer.encode(prompt, add_special_tokens=False)
    completion_tokens = tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
    tokens = prompt_tokens + completion_tokens
    weights = [0.0] * (len(prompt_tokens) - 1) + [1.0] * len(completion_tokens)
    n = len(tokens) - 1
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData(data=tokens[1:], dtype="int64", shape=[n]),
            "weights": types.TensorData(data=weights, dtype="float32", shape=[n]),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_connection_args(parser)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-2)
    args = parser.parse_args()

    service, base_model = connect(args)
    training = service.create_lora_training_client(base_model=base_model, rank=args.rank, seed=0).result()
    tokenizer = training.get_tokenizer()
    batch = [make_datum(tokenizer, p, c) for p, c in PAIRS]
    n_weighted = sum(sum(d.loss_fn_inputs["weights"].data) for d in batch)
    losses = []
    for step in range(args.steps):
        # Submit both before waiting: the server pipelines them in order.
        fwdbwd = training.forward_backward(batch, "cross_entropy")
        optim = training.optim_step(types.AdamParams(learning_rate=args.learning_rate))
        loss = fwdbwd.result().metrics["loss:sum"] / n_weighted
        optim.result()
        losses.append(loss)
        print(f"step {step:3d}  loss/token {loss:.4f}", flush=True)

    sampler = training.save_weights_and_get_sampling_client().result()
    for prompt, expected in PAIRS:
        result = sampler.sample(
            prompt=types.ModelInput.from_ints(tokenizer.encode(prompt, add_special_tokens=False)),
            num_samples=1, sampling_params=types.SamplingParams(max_tokens=4, temperature=0.0),
        ).result()
        text = tokenizer.decode(result.sequences[0].tokens, skip_special_tokens=True)
        print(f"{prompt!r} -> {text!r} (trained on {expected!r})")
    print(f"first loss {losses[0]:.4f}, last loss {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
