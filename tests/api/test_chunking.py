"""Issue #3 item 7: batches bigger than the advertised chunk limit come back whole and in order.

The server advertises ``fwdbwd_max_chunk_len`` (256 data by default) in
/client/config; the SDK splits a bigger batch into several forward_backward
requests, sends them concurrently (the first chunk last), and concatenates
the results. The server must run them in seq order and lose nothing.
"""

from __future__ import annotations

import httpx
import pytest
import tinker
from tinker import types

from tests.conftest import MODEL_NAME, LiveServer

TIMEOUT = 180


def _datum(i: int) -> types.Datum:
    # Lengths cycle through 1..13, so a datum landing in the wrong place shows in its shape.
    n = 1 + i % 13
    tokens = [(7 * i + j) % 1000 + 3 for j in range(n)]
    targets = [(t * 5 + 1) % 1000 for t in tokens]
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens),
        loss_fn_inputs={"target_tokens": types.TensorData(data=targets, dtype="int64", shape=[n])},
    )


def test_batches_larger_than_the_chunk_limit_are_split_and_reassembled(server: LiveServer) -> None:
    config = httpx.post(f"{server.url}/api/v1/client/config", json={"sdk_version": "0.38.0"},
                        headers={"X-API-Key": server.keys["alice"]}, timeout=30).json()
    limit = config["fwdbwd_max_chunk_len"]
    assert limit == 256
    n_data = 2 * limit + 88  # three chunks: 256, 256, 88
    data = [_datum(i) for i in range(n_data)]

    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    tc = client.create_lora_training_client(base_model=MODEL_NAME, rank=2, seed=3).result(timeout=TIMEOUT)
    whole = tc.forward(data, "cross_entropy").result(timeout=TIMEOUT)
    assert len(whole.loss_fn_outputs) == n_data
    for i, out in enumerate(whole.loss_fn_outputs):
        assert out["logprobs"].shape == [1 + i % 13], f"datum {i} out of place"
    # Each datum's result equals what a small, unchunked request gives for it.
    probe = [0, 1, limit - 1, limit, limit + 1, 2 * limit, n_data - 1]
    alone = tc.forward([data[i] for i in probe], "cross_entropy").result(timeout=TIMEOUT)
    for k, i in enumerate(probe):
        assert whole.loss_fn_outputs[i]["logprobs"].tolist() == pytest.approx(
            alone.loss_fn_outputs[k]["logprobs"].tolist(), abs=1e-5)
    # The combined metric sums the chunks' sums: the loss of every datum.
    total = -sum(sum(out["logprobs"].tolist()) for out in whole.loss_fn_outputs)
    assert whole.metrics["loss:sum"] == pytest.approx(total, rel=1e-5)

    # forward_backward over the same batch: gradients of all chunks accumulate into one step.
    fb = tc.forward_backward(data, "cross_entropy").result(timeout=TIMEOUT)
    assert len(fb.loss_fn_outputs) == n_data
    assert fb.metrics["loss:sum"] == pytest.approx(whole.metrics["loss:sum"], rel=1e-5)
    tc.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=TIMEOUT)
    after = tc.forward(data, "cross_entropy").result(timeout=TIMEOUT)
    assert after.metrics["loss:sum"] < whole.metrics["loss:sum"]

    # The server really saw chunks: the run's recorded requests, in seq order.
    assert _recorded_sizes(server, tc.model_id) == [256, 256, 88, len(probe), 256, 256, 88, 256, 256, 88]


def _recorded_sizes(server: LiveServer, run_id: str) -> list[int]:
    """num_data of the run's forward(_backward) operations, read from the server's database."""
    if not server.env.get("DATABASE_URL"):
        import json
        import sqlite3

        with sqlite3.connect(server.home / "db.sqlite3") as db:
            rows = db.execute(
                "SELECT request FROM training_app_operation WHERE training_run_id = ? "
                "AND kind IN ('forward', 'forward_backward') ORDER BY seq_id", (run_id,)
            ).fetchall()
        return [json.loads(r[0])["num_data"] for r in rows]
    out = server.manage("shell", "-c", (  # slower (a Django start-up), for PostgreSQL runs
        "from training_app.models import Operation as O; "
        f"print([o.request.get('num_data') for o in O.objects.filter(training_run_id={run_id!r}, "
        "kind__in=['forward', 'forward_backward']).order_by('seq_id')])"
    ))
    return [int(x) for x in out.strip().splitlines()[-1].strip("[]").split(",")]
