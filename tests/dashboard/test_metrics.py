"""A run's metrics table (dashboard_app.metrics) and its exports, through a live server.

Every step of forward_backward is a row with its wall time, tokens and every
reported metric; the learning rate comes from the optim_step after it. The
CSV and JSON exports hold the same numbers the SDK saw, and another tenant
gets 404 for them.
"""

from __future__ import annotations

import csv
import io
import secrets

import httpx
import pytest
import tinker
from tinker import types

from tests.conftest import MODEL_NAME, LiveServer

pytestmark = pytest.mark.timeout(240)
TOKENS = [5, 17, 29, 41, 53, 65]


def dashboard_session(server: LiveServer, key: str) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=60)
    client.get("/dashboard/login/")
    r = client.post("/dashboard/login/", data={"api_key": key, "csrfmiddlewaretoken": client.cookies["csrftoken"]})
    assert r.status_code == 302
    return client


def test_metrics_export_matches_what_the_sdk_saw(server: LiveServer) -> None:
    key = server.create_tenant(f"metrics-{secrets.token_hex(3)}")
    service = tinker.ServiceClient(base_url=server.url, api_key=key)
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=60)
    datum = types.Datum(model_input=types.ModelInput.from_ints(TOKENS[:-1]), loss_fn_inputs={
        "target_tokens": types.TensorData(data=TOKENS[1:], dtype="int64", shape=[len(TOKENS) - 1])})
    losses = []
    for lr in (1e-2, 5e-3):
        losses.append(training.forward_backward([datum], "cross_entropy").result(timeout=60).metrics["loss:sum"])
        training.optim_step(types.AdamParams(learning_rate=lr)).result(timeout=60)

    owner = dashboard_session(server, key)
    table = owner.get(f"/dashboard/runs/{training.model_id}/metrics.json").json()
    cols = table["columns"]
    assert cols[:4] == ["step", "time", "tokens", "loss:sum"] and cols[-1] == "learning_rate"
    assert [row[0] for row in table["rows"]] == [1, 2]
    assert [row[cols.index("loss:sum")] for row in table["rows"]] == pytest.approx(losses)
    assert [row[cols.index("learning_rate")] for row in table["rows"]] == [1e-2, 5e-3]
    assert all(row[cols.index("tokens")] == len(TOKENS) - 1 for row in table["rows"])
    assert table["rows"][0][1] <= table["rows"][1][1]

    exported = owner.get(f"/dashboard/runs/{training.model_id}/metrics.csv")
    assert exported.headers["content-disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [float(r["loss:sum"]) for r in rows] == pytest.approx(losses)

    compare = owner.get(f"/dashboard/compare/?runs={training.model_id}&runs=no-such-run")
    assert compare.status_code == 200 and "compare-metrics" in compare.text

    other = dashboard_session(server, server.create_tenant(f"nosy-{secrets.token_hex(3)}"))
    for path in ("metrics.json", "metrics.csv"):
        assert other.get(f"/dashboard/runs/{training.model_id}/{path}").status_code == 404
    assert training.model_id not in other.get(f"/dashboard/compare/?runs={training.model_id}").text
