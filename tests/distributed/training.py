"""The fixed little training run every distributed test compares against.

Deterministic: LoRA seed 0, one datum, AdamW lr 1e-2. Its per-step losses are
the same wherever its steps execute (embedded, any worker, after any restore),
so a test can compare an interrupted run with an uninterrupted one exactly.
"""

from __future__ import annotations

from typing import Any

from tinker import types as T

from tests.conftest import MODEL_NAME

STEPS = 4
ADAM = T.AdamParams(learning_rate=1e-2)
TOKENS = [(7 * i + 3) % 900 + 20 for i in range(24)]


def datum() -> T.Datum:
    return T.Datum(
        model_input=T.ModelInput.from_ints(TOKENS[:-1]),
        loss_fn_inputs={"target_tokens": T.TensorData(data=TOKENS[1:], dtype="int64", shape=[len(TOKENS) - 1])},
    )


def new_run(service_client: Any) -> Any:
    return service_client.create_lora_training_client(base_model=MODEL_NAME, rank=8, seed=0).result(timeout=300)


def submit_step(training_client: Any) -> tuple[Any, Any]:
    """forward_backward + optim_step, pipelined as real training loops do."""
    return training_client.forward_backward([datum()], "cross_entropy"), training_client.optim_step(ADAM)


def step(training_client: Any) -> float:
    fb, opt = submit_step(training_client)
    loss = float(fb.result().metrics["loss:sum"])
    opt.result()
    return loss


def greedy(sampling_client: Any) -> list[int]:
    if hasattr(sampling_client, "result"):  # the SDK hands out a future of the client
        sampling_client = sampling_client.result(timeout=120)
    prompt = T.ModelInput.from_ints(TOKENS[:6])
    result = sampling_client.sample(prompt, 1, T.SamplingParams(max_tokens=6, temperature=0.0)).result()
    return list(result.sequences[0].tokens)
