"""Issue #2: bad input gets a clear 4xx JSON or a failed future with category "user";
the run stays usable and the server keeps serving."""

from __future__ import annotations

import pytest
import tinker
from tinker import types

from tests.api.helpers import datum, post, proto_forward_backward
from tests.conftest import MODEL_NAME, LiveServer

GOOD = [datum([1, 2, 3, 4], [2, 3, 4, 5])]


def _assert_user_failure(future: "tinker.APIFuture", match: str) -> None:
    with pytest.raises(tinker.RequestFailedError) as info:
        future.result(timeout=60)
    assert info.value.category == "user"
    assert match in str(info.value)


def test_wrong_key_is_401(server: LiveServer) -> None:
    r = post(server, "client/config", "tml-not-a-real-key", {"sdk_version": "0.38.0"})
    assert r.status_code == 401 and r.json()["detail"]
    r = post(server, "create_session", "", {"tags": []})
    assert r.status_code == 401 and r.json()["detail"]
    with pytest.raises(tinker.AuthenticationError):
        tinker.ServiceClient(base_url=server.url, api_key="tml-wrong").create_lora_training_client(
            base_model=MODEL_NAME, rank=4).result(timeout=60)


def test_unknown_base_model_is_400(server: LiveServer) -> None:
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    with pytest.raises(tinker.BadRequestError, match="unknown base model"):
        client.create_lora_training_client(base_model="no/such-model", rank=4).result(timeout=60)


def test_bad_training_input_fails_future_and_run_continues(server: LiveServer) -> None:
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=60)
    first = training.forward_backward(GOOD, "cross_entropy").result(timeout=60).metrics["loss:sum"]

    _assert_user_failure(training.forward_backward([datum([1, 2, 5000], [2, 3, 4])], "cross_entropy"),
                         "outside the vocabulary")
    _assert_user_failure(training.forward_backward([datum([1, 2, 3], [2, 3, -1])], "cross_entropy"),
                         "outside the vocabulary")
    _assert_user_failure(training.forward_backward([datum([1, 2, 3, 4], [2, 3])], "cross_entropy"),
                         "target_tokens has shape")
    _assert_user_failure(training.forward_backward(GOOD, "no_such_loss"), "unknown loss")  # type: ignore[arg-type]
    _assert_user_failure(training.forward_backward([datum(list(range(1, 300)), list(range(2, 301)))],
                                                   "cross_entropy"), "max_model_len")
    _assert_user_failure(training.optim_step(types.AdamParams(learning_rate=-1.0)), "learning_rate")

    # The run is intact: the failed steps changed nothing, and it keeps training.
    again = training.forward_backward(GOOD, "cross_entropy").result(timeout=60).metrics["loss:sum"]
    assert abs(again - first) < 1e-5
    training.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=60)
    after = training.forward(GOOD, "cross_entropy").result(timeout=60).metrics["loss:sum"]
    assert after < first


def test_malformed_protobuf_is_400(server: LiveServer) -> None:
    key = server.keys["alice"]
    r = post(server, "forward_backward", key, content=b"\xff\xff\xff not protobuf",
             content_type="application/x-protobuf")
    assert r.status_code == 400 and "protobuf" in r.json()["detail"]
    r = post(server, "forward_backward", key, {"model_id": "x"})  # JSON instead of protobuf
    assert r.status_code == 400 and r.json()["detail"]
    r = post(server, "forward_backward", key, content=proto_forward_backward("sess-x:train:0", 1, GOOD),
             content_type="application/x-protobuf")
    assert r.status_code == 404
    r = post(server, "create_model", key, {"session_id": "nope"})  # missing fields
    assert r.status_code == 400 and r.json()["errors"]
    r = post(server, "retrieve_future", key, {"request_id": "req-unknown", "allow_metadata_only": False})
    assert r.status_code == 404


def test_bad_sampling_input(server: LiveServer) -> None:
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    sampler = client.create_sampling_client(base_model=MODEL_NAME).result(timeout=60)
    too_long = types.ModelInput.from_ints(list(range(1, 300)))
    with pytest.raises(Exception, match="max_model_len"):
        sampler.sample(prompt=too_long, num_samples=1,
                       sampling_params=types.SamplingParams(max_tokens=4)).result(timeout=60)
    with pytest.raises(Exception, match="vocabulary"):
        sampler.sample(prompt=types.ModelInput.from_ints([1, 99999]), num_samples=1,
                       sampling_params=types.SamplingParams(max_tokens=4)).result(timeout=60)
    # The server keeps serving.
    ok = sampler.sample(prompt=types.ModelInput.from_ints([1, 2, 3]), num_samples=1,
                        sampling_params=types.SamplingParams(max_tokens=3, temperature=0.0)).result(timeout=60)
    assert len(ok.sequences[0].tokens) >= 1
