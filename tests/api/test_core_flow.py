"""Issue #2: the product's README example, unchanged, through the unmodified SDK."""

from __future__ import annotations

from pathlib import Path

import tinker
from tinker import types

from tests.conftest import MODEL_NAME, LiveServer


def test_readme_flow(server: LiveServer) -> None:
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    capabilities = client.get_server_capabilities()
    base_model = capabilities.supported_models[0].model_name
    assert base_model == MODEL_NAME
    training = client.create_lora_training_client(base_model=base_model, rank=8)
    prompt_tokens = [101, 42, 37, 102]
    target_tokens = [101, 99, 73, 102]
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(prompt_tokens),
        loss_fn_inputs={"target_tokens": types.TensorData(data=target_tokens, dtype="int64", shape=[4])},
    )
    fwdbwd = training.forward_backward([datum], "cross_entropy").result(timeout=30)
    optim = training.optim_step(types.AdamParams(learning_rate=1e-4)).result(timeout=30)
    checkpoint = training.save_state("demo-checkpoint").result(timeout=60)
    sampler_weights = training.save_weights_for_sampler("demo-sampler").result(timeout=60)
    rest = client.create_rest_client()
    session_info = rest.get_session(client.holder.get_session_id()).result(timeout=30)
    sampling = client.create_sampling_client(model_path=sampler_weights.path)
    sample = sampling.sample(
        prompt=types.ModelInput.from_ints([101, 57, 12, 7, 102]), num_samples=1,
        sampling_params=types.SamplingParams(max_tokens=5, temperature=0.5),
    ).result(timeout=30)

    # Real work happened at every step.
    assert fwdbwd.metrics["loss:sum"] > 0
    logprobs = fwdbwd.loss_fn_outputs[0]["logprobs"].tolist()
    assert len(logprobs) == 4 and all(lp < 0 for lp in logprobs)
    assert abs(-sum(logprobs) - fwdbwd.metrics["loss:sum"]) < 1e-4
    assert optim.metrics is not None and optim.metrics["grad_norm:mean"] > 0
    run_id = training.model_id
    assert checkpoint.path == f"tinker://{run_id}/weights/demo-checkpoint"
    assert sampler_weights.path == f"tinker://{run_id}/sampler_weights/demo-sampler"
    assert run_id in session_info.training_run_ids
    seq = sample.sequences[0]
    assert 1 <= len(seq.tokens) <= 5 and len(seq.logprobs) == len(seq.tokens)
    assert seq.stop_reason in ("stop", "length")
    assert all(0 <= t < 1024 for t in seq.tokens)

    # The files are standard PEFT adapters under --checkpoint-dir, one directory per kind.
    ckpt_root = server.home / "checkpoints"
    training_dir = next(ckpt_root.glob(f"*/{run_id}/weights/demo-checkpoint"))
    sampler_dir = next(ckpt_root.glob(f"*/{run_id}/sampler_weights/demo-sampler"))
    for d in (training_dir, sampler_dir):
        assert (d / "adapter_config.json").exists() and (d / "adapter_model.safetensors").exists()
    assert (training_dir / "optimizer.pt").exists()
    assert not (sampler_dir / "optimizer.pt").exists()
    assert not list(ckpt_root.rglob(".tmp-*")), "no temporary checkpoint directories left behind"
    client.holder.close() if hasattr(client.holder, "close") else None


def test_saved_adapter_loads_with_plain_peft(server: LiveServer, tiny_model_dir: Path) -> None:
    """A sampler checkpoint is a standard PEFT adapter: peft loads it onto the base model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=4, seed=1).result(timeout=60)
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([5, 6, 7, 8]),
        loss_fn_inputs={"target_tokens": types.TensorData(data=[6, 7, 8, 9], dtype="int64", shape=[4])},
    )
    training.forward_backward([datum], "cross_entropy").result(timeout=30)
    training.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=30)
    after = training.forward([datum], "cross_entropy").result(timeout=30)
    saved = training.save_weights_for_sampler("peft-check").result(timeout=60)
    directory = next((server.home / "checkpoints").glob(f"*/{training.model_id}/sampler_weights/peft-check"))

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(directory))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits[0]
    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor([[6], [7], [8], [9]])).squeeze(-1)
    expected = after.loss_fn_outputs[0]["logprobs"].tolist()
    assert saved.path.endswith("/sampler_weights/peft-check")
    assert max(abs(a - b) for a, b in zip(lp.tolist(), expected)) < 1e-5
