"""Issue #2: a run's operations execute strictly in seq_id order; resubmission is idempotent."""

from __future__ import annotations

import tinker
from tinker import types
from tinker.proto.response_conv import deserialize_forward_backward_output

from tests.api.helpers import datum, post, proto_forward_backward, wait_future
from tests.conftest import MODEL_NAME, LiveServer

BATCH = [datum([11, 12, 13, 14, 15], [12, 13, 14, 15, 16])]


def test_pipelined_forward_sees_the_update(server: LiveServer) -> None:
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=8, seed=0).result(timeout=60)
    # Submit all three without waiting for any result.
    fb = training.forward_backward(BATCH, "cross_entropy")
    opt = training.optim_step(types.AdamParams(learning_rate=5e-2))
    fwd = training.forward(BATCH, "cross_entropy")
    loss_before = fb.result(timeout=60).metrics["loss:sum"]
    opt.result(timeout=60)
    loss_after = fwd.result(timeout=60).metrics["loss:sum"]
    assert loss_after < loss_before - 1.0, (loss_before, loss_after)


def test_out_of_order_arrival_executes_in_seq_order(server: LiveServer) -> None:
    key = server.keys["alice"]
    client = tinker.ServiceClient(base_url=server.url, api_key=key)
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=8, seed=0).result(timeout=60)
    run = training.model_id
    # The SDK used no seq ids yet after creation: raw requests take 1, 2, 3.
    # Send them in the order 3 (forward), 1 (forward_backward), 2 (optim_step).
    fwd = post(server, "forward_backward", key, content=proto_forward_backward(run, 3, BATCH, forward_only=True),
               content_type="application/x-protobuf")
    fb = post(server, "forward_backward", key, content=proto_forward_backward(run, 1, BATCH),
              content_type="application/x-protobuf")
    opt = post(server, "optim_step", key, {
        "model_id": run, "seq_id": 2, "type": "optim_step",
        "adam_params": {"learning_rate": 5e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12,
                        "weight_decay": 0.0, "grad_clip_norm": 0.0},
    })
    assert fwd.status_code == fb.status_code == opt.status_code == 200
    fb_out = deserialize_forward_backward_output(wait_future(server, key, fb.json()["request_id"]).content)
    wait_future(server, key, opt.json()["request_id"])
    fwd_out = deserialize_forward_backward_output(wait_future(server, key, fwd.json()["request_id"]).content)
    assert fwd_out.metrics["loss:sum"] < fb_out.metrics["loss:sum"] - 1.0

    # Resubmitting (model_id, seq_id) returns the same future, and does not run it twice.
    again = post(server, "forward_backward", key, content=proto_forward_backward(run, 1, BATCH),
                 content_type="application/x-protobuf")
    assert again.json()["request_id"] == fb.json()["request_id"]
