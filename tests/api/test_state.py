"""Issue #3 items 4 and 5: training clients from saved state, and LoRA options.

Through the unmodified SDK against the shared live server: resuming with the
optimizer continues exactly where an uninterrupted run goes; resuming without
it does not; save_weights_and_get_sampling_client samples the current weights;
rank, seed, train_mlp, train_attn and train_unembed all take effect.
"""

from __future__ import annotations

import httpx
import pytest
import tinker
from safetensors import safe_open
from tinker import types

from tests.conftest import MODEL_NAME, LiveServer

TIMEOUT = 120
LR = 2e-2


def _batch() -> list[types.Datum]:
    data = []
    for i in range(3):
        tokens = [3 + i, 40, 41 + i, 42, 43, 44 + i, 45]
        targets = tokens[1:] + [46]
        data.append(types.Datum(
            model_input=types.ModelInput.from_ints(tokens),
            loss_fn_inputs={"target_tokens": types.TensorData(data=targets, dtype="int64", shape=[len(targets)])},
        ))
    return data


def _step(tc: tinker.TrainingClient) -> float:
    loss = tc.forward_backward(_batch(), "cross_entropy").result(timeout=TIMEOUT).metrics["loss:sum"]
    tc.optim_step(types.AdamParams(learning_rate=LR)).result(timeout=TIMEOUT)
    return loss


def _loss(tc: tinker.TrainingClient) -> float:
    return tc.forward(_batch(), "cross_entropy").result(timeout=TIMEOUT).metrics["loss:sum"]


@pytest.fixture(scope="module")
def alice(server: LiveServer) -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])


@pytest.mark.filterwarnings("ignore:DEPRECATED.*load_state")
def test_restoring_with_optimizer_continues_exactly(alice: tinker.ServiceClient) -> None:
    tc = alice.create_lora_training_client(base_model=MODEL_NAME, rank=4, seed=7).result(timeout=TIMEOUT)
    session_id = alice.holder.get_session_id()
    for _ in range(3):
        _step(tc)
    path = tc.save_state("resume-point").result(timeout=TIMEOUT).path
    _step(tc)
    _step(tc)
    uninterrupted = _loss(tc)

    # A new run from the checkpoint, optimizer included: the SDK computes its id itself.
    resumed = alice.create_training_client_from_state_with_optimizer(path).result(timeout=TIMEOUT)
    assert resumed.model_id.startswith(f"{session_id}:train:")
    assert resumed.get_info().lora_rank == 4
    _step(resumed)
    _step(resumed)
    assert _loss(resumed) == pytest.approx(uninterrupted, abs=1e-6)

    # Without the optimizer, Adam starts from fresh moments and the run diverges.
    fresh = alice.create_training_client_from_state(path).result(timeout=TIMEOUT)
    assert fresh.model_id != resumed.model_id
    _step(fresh)
    _step(fresh)
    without_optimizer = _loss(fresh)
    assert abs(without_optimizer - uninterrupted) > 1e-3

    # load_state / load_state_with_optimizer rewind an existing run the same two ways.
    tc.load_state_with_optimizer(path).result(timeout=TIMEOUT)
    _step(tc)
    _step(tc)
    assert _loss(tc) == pytest.approx(uninterrupted, abs=1e-6)
    tc.load_state(path).result(timeout=TIMEOUT)
    _step(tc)
    _step(tc)
    assert _loss(tc) == pytest.approx(without_optimizer, abs=1e-6)

    # Sampler weights are not training state.
    sampler_path = tc.save_weights_for_sampler("not-state").result(timeout=TIMEOUT).path
    with pytest.raises(tinker.BadRequestError, match="training checkpoint"):
        alice.create_training_client_from_state(sampler_path).result(timeout=TIMEOUT)


def test_save_weights_and_get_sampling_client_samples_the_current_weights(
    alice: tinker.ServiceClient, server: LiveServer
) -> None:
    tc = alice.create_lora_training_client(base_model=MODEL_NAME, rank=4, seed=1).result(timeout=TIMEOUT)
    for _ in range(3):
        _step(tc)
    sampler = tc.save_weights_and_get_sampling_client().result(timeout=TIMEOUT)
    # The unnamed save came back as a sampling session of this client's session.
    rest = tinker.RestClient(base_url=server.url, api_key=server.keys["alice"])
    session = rest.get_session(alice.holder.get_session_id()).result(timeout=TIMEOUT)
    assert sampler._sampling_session_id in session.sampler_ids
    datum = _batch()[0]
    tokens = datum.model_input.to_ints()
    trainer = tc.forward([datum], "cross_entropy").result(timeout=TIMEOUT).loss_fn_outputs[0]["logprobs"].tolist()
    # Sampler and trainer agree on the logprobs of the same tokens (prompt position i+1 = target i).
    full = tokens + [datum.loss_fn_inputs["target_tokens"].tolist()[-1]]
    scored = sampler.compute_logprobs(types.ModelInput.from_ints(full)).result(timeout=TIMEOUT)
    assert scored[1:] == pytest.approx(trainer, abs=1e-4)
    # It samples the trained adapter, not the base model: it matches a named sampler save.
    named = tc.save_weights_for_sampler("same-weights").result(timeout=TIMEOUT).path
    by_path = alice.create_sampling_client(model_path=named).result(timeout=TIMEOUT)
    base = alice.create_sampling_client(base_model=MODEL_NAME).result(timeout=TIMEOUT)
    greedy = types.SamplingParams(max_tokens=6, temperature=0, stop=[])
    prompt = types.ModelInput.from_ints(tokens[:3])
    a = sampler.sample(prompt, 1, greedy).result(timeout=TIMEOUT).sequences[0].tokens
    assert a == by_path.sample(prompt, 1, greedy).result(timeout=TIMEOUT).sequences[0].tokens
    assert a != base.sample(prompt, 1, greedy).result(timeout=TIMEOUT).sequences[0].tokens


def _adapter_keys(server: LiveServer, tinker_path: str) -> set[str]:
    run_id, kind, name = tinker_path.removeprefix("tinker://").split("/")
    directory = next((server.home / "checkpoints").glob(f"*/{run_id}/{kind}/{name}"))
    with safe_open(str(directory / "adapter_model.safetensors"), "pt") as f:
        return set(f.keys())


def test_lora_options_take_effect_and_are_reported(
    alice: tinker.ServiceClient, server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rest = tinker.RestClient(base_url=server.url, api_key=server.keys["alice"])
    attn_only = alice.create_lora_training_client(
        base_model=MODEL_NAME, rank=2, seed=5, train_mlp=False, train_unembed=False, train_attn=True
    ).result(timeout=TIMEOUT)
    mlp_only = alice.create_lora_training_client(
        base_model=MODEL_NAME, rank=3, seed=5, train_mlp=True, train_unembed=True, train_attn=False
    ).result(timeout=TIMEOUT)
    assert attn_only.get_info().lora_rank == 2 and mlp_only.get_info().lora_rank == 3
    raw = httpx.post(f"{server.url}/api/v1/get_info",
                     json={"model_id": mlp_only.model_id, "type": "get_info"},
                     headers={"X-API-Key": server.keys["alice"]}, timeout=30).json()
    assert raw["lora_config"] == {"rank": 3, "seed": 5, "train_mlp": True, "train_attn": False,
                                  "train_unembed": True, "alpha": 6}

    keys_attn = _adapter_keys(server, attn_only.save_weights_for_sampler("attn").result(timeout=TIMEOUT).path)
    mlp_path = mlp_only.save_weights_for_sampler("mlp").result(timeout=TIMEOUT).path
    keys_mlp = _adapter_keys(server, mlp_path)
    assert any("q_proj" in k for k in keys_attn) and not any("mlp" in k or "lm_head" in k for k in keys_attn)
    assert not any(p in k for k in keys_mlp for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert any("gate_proj" in k for k in keys_mlp) and any("lm_head" in k for k in keys_mlp)
    info = rest.get_weights_info_by_tinker_path(mlp_path).result(timeout=TIMEOUT)
    assert (info.lora_rank, info.train_attn, info.train_mlp, info.train_unembed) == (3, False, True, True)

    # The seed fixes the adapter's initialisation: same seed, same first step; other seed, other step.
    runs = [alice.create_lora_training_client(base_model=MODEL_NAME, rank=4, seed=s).result(timeout=TIMEOUT)
            for s in (11, 11, 12)]
    for tc in runs:
        _step(tc)
    after = [_loss(tc) for tc in runs]
    assert after[0] == pytest.approx(after[1], abs=1e-7)
    assert abs(after[0] - after[2]) > 1e-6

    # The tokenizer loads offline: get_info names the model's local directory.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = attn_only.get_tokenizer()
    assert tokenizer.decode(tokenizer.encode("the model learns")) == "the model learns"

    # Ranks beyond models.yaml's max_lora_rank (default 128) are refused when the run is created.
    with pytest.raises(tinker.BadRequestError, match="rank 129 is out of range"):
        alice.create_lora_training_client(base_model=MODEL_NAME, rank=129).result(timeout=TIMEOUT)
