"""The scheduler through a live server: lanes survive releases; tenants take turns."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import pytest
import tinker
from tinker import types

from tests.api.helpers import datum, get, post, proto_forward_backward, wait_future
from tests.conftest import MODEL_NAME, LiveServer, start_server, write_models_yaml

TIMEOUT = 120
FLOOD = 10  # queued sample requests of one tenant
BATCH = [datum([11, 12, 13, 14, 15], [12, 13, 14, 15, 16])]


def _session(server: LiveServer, key: str) -> str:
    r = post(server, "create_session", key, {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0",
                                             "type": "create_session"})
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


def _run(server: LiveServer, key: str, session: str) -> str:
    r = post(server, "create_model", key, {
        "session_id": session, "model_seq_id": 0, "base_model": MODEL_NAME, "type": "create_model",
        "lora_config": {"rank": 2, "train_unembed": True, "train_mlp": True, "train_attn": True},
    })
    assert r.status_code == 200, r.text
    return wait_future(server, key, r.json()["request_id"], timeout=TIMEOUT).json()["model_id"]


def _failed(response: httpx.Response) -> bool:
    """A finished future's response is a failure (JSON with "error"), not a result."""
    return response.headers.get("content-type", "").startswith("application/json") and "error" in response.json()


@pytest.mark.parametrize("how", ["finish", "finish_with_an_op_in_order_queued_too"])
def test_finishing_a_session_with_an_op_waiting_for_its_seq_keeps_training_alive(server: LiveServer,
                                                                                  how: str) -> None:
    """Hardening issue: forward_backward seq 5 (waiting for 1-4), then finish the session.

    The release used to leave seq 5 queued for a run it had forgotten: the next
    scheduling pass raised KeyError, the training thread died, every later
    create_model failed with 500 and /healthz still said ok.
    """
    key = server.keys["alice"]
    session = _session(server, key)
    run = _run(server, key, session)
    waiting = post(server, "forward_backward", key, content=proto_forward_backward(run, 5, BATCH),
                   content_type="application/x-protobuf")
    assert waiting.status_code == 200, waiting.text
    queued = []
    if how != "finish":  # plus one whose turn has come, so both paths of a release are covered
        queued.append(post(server, "forward_backward", key, content=proto_forward_backward(run, 1, BATCH),
                           content_type="application/x-protobuf").json()["request_id"])
    assert post(server, f"sessions/{session}/finish", key, {}).status_code == 200

    # The waiting operation fails clearly (it can never run), well before the 60 s gap timeout.
    failed = wait_future(server, key, waiting.json()["request_id"], timeout=TIMEOUT).json()
    assert failed["category"] == "user" and "released" in failed["error"], failed
    for request_id in queued:  # ran before the release, or failed as released: never hangs
        outcome = wait_future(server, key, request_id, timeout=TIMEOUT)
        assert outcome.status_code == 200 and (not _failed(outcome) or "released" in outcome.json()["error"])

    # Training still works for everyone, and the server says it is healthy.
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["bob"])
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    out = training.forward_backward(BATCH, "cross_entropy").result(timeout=TIMEOUT)
    assert out.metrics["loss:sum"] > 0
    health = httpx.get(f"{server.url}/api/v1/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_ready_forward_backwards_of_several_tenants_all_complete_with_their_own_results(
        server: LiveServer) -> None:
    """Batched execution records each operation's own outcome (one run's bad input fails alone)."""
    clients = {name: tinker.ServiceClient(base_url=server.url, api_key=server.keys[name]) for name in ("alice", "bob")}
    runs = {name: c.create_lora_training_client(base_model=MODEL_NAME, rank=4, seed=1).result(timeout=TIMEOUT)
            for name, c in clients.items()}
    good = {name: [r.forward_backward(BATCH, "cross_entropy") for _ in range(3)] for name, r in runs.items()}
    bad = runs["bob"].forward([datum([11, 99999], [12, 13])], "cross_entropy")  # token outside the vocabulary
    losses = {name: [f.result(timeout=TIMEOUT).metrics["loss:sum"] for f in futures] for name, futures in good.items()}
    # Same seed, same data, no optim_step in between: every result is the same loss.
    flat = [x for values in losses.values() for x in values]
    assert max(flat) - min(flat) < 1e-4, losses
    with pytest.raises(Exception) as err:
        bad.result(timeout=TIMEOUT)
    assert "vocabulary" in str(err.value)


def test_steps_of_several_tenants_batched_train_each_run_as_if_alone(server: LiveServer) -> None:
    """forward_backward + optim_step of two tenants' runs, submitted together (their optim_steps can
    share one fused AdamW update): same seed and data give the same losses, step after step, and
    the losses fall, so each run trained on its own."""
    clients = {name: tinker.ServiceClient(base_url=server.url, api_key=server.keys[name]) for name in ("alice", "bob")}
    runs = {name: c.create_lora_training_client(base_model=MODEL_NAME, rank=4, seed=7).result(timeout=TIMEOUT)
            for name, c in clients.items()}
    adam = types.AdamParams(learning_rate=5e-2)
    losses: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(3):
        futures = {name: (r.forward_backward(BATCH, "cross_entropy"), r.optim_step(adam)) for name, r in runs.items()}
        for name, (fb, opt) in futures.items():
            losses[name].append(fb.result(timeout=TIMEOUT).metrics["loss:sum"])
            assert opt.result(timeout=TIMEOUT).metrics is not None
    assert losses["alice"] == pytest.approx(losses["bob"], rel=1e-4, abs=1e-4), losses
    assert losses["alice"][2] < losses["alice"][0], losses


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    """Sample batches of one request and short long polls, so a queue position is observable."""
    home = tmp_path_factory.mktemp("tuft-sched")
    srv = start_server(home, write_models_yaml(home / "models.yaml", tiny_model_dir), extra_env={
        "TUFT_SAMPLE_BATCH_MAX": "1", "TUFT_LONG_POLL_S": "1",
    })
    try:
        srv.create_tenant("flood")
        srv.create_tenant("single")
        yield srv
    finally:
        srv.stop()


def test_a_second_tenants_sample_is_not_stuck_behind_a_long_queue(one_at_a_time: LiveServer) -> None:
    srv = one_at_a_time
    key = srv.keys["flood"]
    session = _session(srv, key)
    created = post(srv, "create_sampling_session", key, {
        "session_id": session, "sampling_session_seq_id": 0, "base_model": MODEL_NAME,
        "type": "create_sampling_session"})
    sampler = created.json()["sampling_session_id"]
    queued = []
    for seq in range(FLOOD):  # each decodes 200 tokens: EOS is off (stop=[])
        r = post(srv, "asample", key, {
            "sampling_session_id": sampler, "seq_id": seq, "num_samples": 1, "type": "sample",
            "prompt": {"chunks": [{"tokens": [101, 57, 12, seq % 50 + 1], "type": "encoded_text"}]},
            "sampling_params": {"max_tokens": 200, "temperature": 0.0, "stop": []},
        })
        assert r.status_code == 200, r.text
        queued.append(r.json()["request_id"])

    other = tinker.ServiceClient(base_url=srv.url, api_key=srv.keys["single"])
    sampling = other.create_sampling_client(base_model=MODEL_NAME)
    result = sampling.sample(prompt=types.ModelInput.from_ints([101, 57, 12, 7]), num_samples=1,
                             sampling_params=types.SamplingParams(max_tokens=4, temperature=0.0)).result(
        timeout=TIMEOUT)
    assert len(result.sequences[0].tokens) == 4
    for request_id in queued:  # the flood itself completes
        assert not _failed(wait_future(srv, key, request_id, timeout=TIMEOUT))
    # Round-robin: "single" ran within a batch or two of submitting, while "flood" still had most
    # of its queue ahead (first-come-first-served would have finished all of it first). Read the
    # order in which the operations finished from the database: no clock window is involved.
    order = srv.manage("shell", "-c", (
        "from training_app.models import Operation\n"
        "for op in Operation.objects.filter(kind='sample').order_by('finished_at'):\n"
        "    print(op.tenant.name)"
    )).split()
    assert order.count("single") == 1 and order.count("flood") == FLOOD, order
    assert order[order.index("single") + 1:].count("flood") >= FLOOD // 2, order
    assert get(srv, "healthz", key).status_code == 200
