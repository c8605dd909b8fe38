"""Admission limits (docs/api.md "Limits"): server defaults from settings, per-tenant
overrides in the Quota, through the unmodified SDK.

The ``db_server`` servers run with TUFT_MAX_FWDBWD_TOKENS=4096 and the default
TUFT_MAX_NUM_SAMPLES=128; tenant "tight" has its own limits of 2 samples and 8
tokens, tenant "roomy" 200 samples and 8192 tokens (tests/api/conftest.py).
"""

from __future__ import annotations

import pytest
import tinker
from tinker import types

from tests.api.conftest import DbServer
from tests.api.helpers import datum, post
from tests.conftest import MODEL_NAME

# 17 data of 250 tokens: 4250 tokens, over the server's 4096, under "roomy"'s 8192.
BIG_BATCH = [datum(list(range(1, 251)), list(range(2, 252))) for _ in range(17)]
PROMPT = types.ModelInput.from_ints([1, 2, 3])


def training_client(srv: DbServer, tenant: str) -> tinker.TrainingClient:
    client = tinker.ServiceClient(base_url=srv.server.url, api_key=srv.server.keys[tenant])
    return client.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=120)


def sampling_client(srv: DbServer, tenant: str) -> tinker.SamplingClient:
    client = tinker.ServiceClient(base_url=srv.server.url, api_key=srv.server.keys[tenant])
    return client.create_sampling_client(base_model=MODEL_NAME).result(timeout=120)


def test_forward_backward_tokens_limit(db_server: DbServer) -> None:
    # Over the server default: the future fails (category user) naming the limit and the value.
    training = training_client(db_server, "alice")
    with pytest.raises(tinker.RequestFailedError) as info:
        training.forward_backward(BIG_BATCH, "cross_entropy").result(timeout=120)
    assert info.value.category == "user"
    assert "4250" in str(info.value) and "4096 (TUFT_MAX_FWDBWD_TOKENS)" in str(info.value)
    # The run is unharmed: its next step trains.
    ok = training.forward_backward([datum([1, 2, 3], [2, 3, 4])], "cross_entropy").result(timeout=120)
    assert ok.metrics["loss:sum"] > 0

    # A tenant's own, lower limit: "quota exceeded".
    tight = training_client(db_server, "tight")
    with pytest.raises(tinker.RequestFailedError) as info:
        tight.forward_backward([datum(list(range(1, 13)), list(range(2, 14)))], "cross_entropy").result(timeout=120)
    assert info.value.category == "user"
    assert "quota exceeded" in str(info.value) and "12" in str(info.value) and "limit of 8" in str(info.value)
    assert tight.forward_backward([datum(list(range(1, 9)), list(range(2, 10)))],
                                  "cross_entropy").result(timeout=120).metrics["loss:sum"] > 0

    # A tenant's own, higher limit lets the big batch through.
    roomy = training_client(db_server, "roomy")
    out = roomy.forward_backward(BIG_BATCH, "cross_entropy").result(timeout=300)
    assert len(out.loss_fn_outputs) == len(BIG_BATCH)


def test_num_samples_limit(db_server: DbServer) -> None:
    params = types.SamplingParams(max_tokens=1, temperature=1.0)
    with pytest.raises(tinker.BadRequestError, match="TUFT_MAX_NUM_SAMPLES"):
        sampling_client(db_server, "alice").sample(prompt=PROMPT, num_samples=129,
                                                   sampling_params=params).result(timeout=120)
    tight = sampling_client(db_server, "tight")
    with pytest.raises(tinker.PermissionDeniedError, match="quota exceeded: num_samples 3"):
        tight.sample(prompt=PROMPT, num_samples=3, sampling_params=params).result(timeout=120)
    assert len(tight.sample(prompt=PROMPT, num_samples=2, sampling_params=params).result(timeout=120).sequences) == 2
    roomy = sampling_client(db_server, "roomy")
    assert len(roomy.sample(prompt=PROMPT, num_samples=150, sampling_params=params).result(timeout=120).sequences) \
        == 150


def test_raw_quota_refusal_is_403_quota_exceeded(db_server: DbServer) -> None:
    srv, key = db_server.server, db_server.server.keys["tight"]
    session = post(srv, "create_session", key, {"tags": [], "sdk_version": "0.38.0", "user_metadata": {}})
    sampler = post(srv, "create_sampling_session", key, {"session_id": session.json()["session_id"],
                                                         "sampling_session_seq_id": 0, "base_model": MODEL_NAME})
    r = post(srv, "asample", key, {"sampling_session_id": sampler.json()["sampling_session_id"], "seq_id": 1,
                                   "num_samples": 5, "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1]}]},
                                   "sampling_params": {"max_tokens": 1}})
    assert r.status_code == 403
    assert r.json()["code"] == "quota_exceeded" and "limit of 2" in r.json()["detail"]


def test_prompt_plus_max_tokens_within_max_model_len(db_server: DbServer) -> None:
    sampler = sampling_client(db_server, "alice")
    with pytest.raises(tinker.BadRequestError, match="max_model_len 256"):
        sampler.sample(prompt=types.ModelInput.from_ints(list(range(1, 201))), num_samples=1,
                       sampling_params=types.SamplingParams(max_tokens=57)).result(timeout=120)
    out = sampler.sample(prompt=types.ModelInput.from_ints(list(range(1, 201))), num_samples=1,
                         sampling_params=types.SamplingParams(max_tokens=56, temperature=0.0)).result(timeout=120)
    assert 1 <= len(out.sequences[0].tokens) <= 56


def test_client_config_chunk_bytes_fit_the_body_limit(db_server: DbServer) -> None:
    r = post(db_server.server, "client/config", db_server.server.keys["alice"], {"sdk_version": "0.38.0"})
    assert r.json()["fwdbwd_max_chunk_bytes_count"] == 1024 * 1024  # half of TUFT_MAX_BODY_BYTES (2 MiB) here
