"""Issue #2: one tenant never sees, loads, samples or deletes another's things (always 404)."""

from __future__ import annotations

import tinker

from tests.api.helpers import datum, get, post, proto_forward_backward
from tests.conftest import MODEL_NAME, LiveServer


def test_other_tenant_gets_404_everywhere(server: LiveServer) -> None:
    alice, bob = server.keys["alice"], server.keys["bob"]
    client = tinker.ServiceClient(base_url=server.url, api_key=alice)
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=4)
    training = training.result(timeout=60)
    training.forward_backward([datum([1, 2, 3], [2, 3, 4])], "cross_entropy").result(timeout=60)
    state = training.save_state("private").result(timeout=60)
    sampler_ckpt = training.save_weights_for_sampler("private-s").result(timeout=60)
    client.create_sampling_client(model_path=sampler_ckpt.path)
    session_id = client.holder.get_session_id()
    run = training.model_id
    # One of Alice's futures, by its request id.
    alice_future = post(server, "create_model", alice, {
        "session_id": session_id, "model_seq_id": 50, "base_model": MODEL_NAME,
        "lora_config": {"rank": 2}, "type": "create_model"}).json()["request_id"]

    bob_client = tinker.ServiceClient(base_url=server.url, api_key=bob)
    bob_rest = tinker.RestClient(base_url=server.url, api_key=bob)
    bob_session = bob_client.holder.get_session_id()

    assert get(server, f"sessions/{session_id}", bob).status_code == 404
    assert get(server, f"training_runs/{run}", bob).status_code == 404
    assert get(server, f"training_runs/{run}/checkpoints", bob).status_code == 404
    assert post(server, "get_info", bob, {"model_id": run, "type": "get_info"}).status_code == 404
    assert post(server, "retrieve_future", bob, {"request_id": alice_future,
                                                 "allow_metadata_only": False}).status_code == 404
    r = post(server, "forward_backward", bob, content=proto_forward_backward(run, 99, [datum([1], [2])]),
             content_type="application/x-protobuf")
    assert r.status_code == 404 and r.json()["detail"]
    assert post(server, "optim_step", bob, {"model_id": run, "seq_id": 99, "type": "optim_step",
                                           "adam_params": {"learning_rate": 1.0}}).status_code == 404
    # Checkpoint paths: cannot sample, load, inspect or delete them.
    for path in (state.path, sampler_ckpt.path):
        assert post(server, "create_sampling_session", bob, {
            "session_id": bob_session, "sampling_session_seq_id": 7, "model_path": path,
            "type": "create_sampling_session"}).status_code == 404
        assert post(server, "weights_info", bob, {"tinker_path": path}).status_code == 404
    assert post(server, "load_weights", bob, {
        "session_id": bob_session, "model_seq_id": 5, "path": state.path, "optimizer": True,
        "type": "load_weights"}).status_code == 404
    delete = bob_rest.delete_checkpoint_from_tinker_path(state.path)
    try:
        delete.result(timeout=30)
        raise AssertionError("bob deleted alice's checkpoint")
    except tinker.NotFoundError:
        pass
    assert get(server, f"samplers/{session_id}:sample:0", bob).status_code == 404
    # Alice still has everything.
    assert get(server, f"training_runs/{run}", alice).status_code == 200
    assert get(server, f"samplers/{session_id}:sample:0", alice).status_code == 200
    # Bob's listings show nothing of Alice's.
    runs = get(server, "training_runs", bob).json()["training_runs"]
    assert all(not r["training_run_id"].startswith(session_id) for r in runs)
    ckpts = get(server, "checkpoints", bob).json()["checkpoints"]
    assert all(run not in c["tinker_path"] for c in ckpts)
    assert session_id not in get(server, "sessions", bob).json()["sessions"]
