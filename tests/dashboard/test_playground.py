"""The sampling playground over HTTP: text in, real tokens and logprobs out, scoped to the tenant.

It samples a base model and the tenant's own sampler checkpoint through the
same path as the SDK (its tokens count as the tenant's sampling usage); a
second tenant cannot see the first's checkpoints in the list nor read its
results; bad input is a 4xx with a JSON body.
"""

from __future__ import annotations

import math
import secrets
import time

import httpx
import pytest
import tinker

from tests.conftest import MODEL_NAME, LiveServer

pytestmark = pytest.mark.timeout(240)


def login(server: LiveServer, key: str) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=60)
    client.get("/dashboard/login/")
    assert client.post("/dashboard/login/", data={"api_key": key,
                                                  "csrfmiddlewaretoken": client.cookies["csrftoken"]}).status_code == 302
    return client


def sample(client: httpx.Client, **fields: str) -> httpx.Response:
    return client.post("/dashboard/playground/sample",
                       data={"csrfmiddlewaretoken": client.cookies["csrftoken"], **fields})


def result(client: httpx.Client, request_id: str) -> dict:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        body = client.get(f"/dashboard/playground/results/{request_id}").json()
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.3)
    raise AssertionError("playground sample did not finish in 90 s")


def test_playground_samples_base_model_and_own_checkpoint(server: LiveServer) -> None:
    key = server.create_tenant(f"play-{secrets.token_hex(3)}")
    service = tinker.ServiceClient(base_url=server.url, api_key=key)
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=60)
    ckpt = training.save_weights_for_sampler("pg-ckpt").result(timeout=60).path
    owner = login(server, key)
    page = owner.get("/dashboard/playground/").text
    assert f'value="base:{MODEL_NAME}"' in page and f'value="ckpt:{ckpt}"' in page

    for model in (f"base:{MODEL_NAME}", f"ckpt:{ckpt}"):
        r = sample(owner, model=model, prompt="hello world", max_tokens="5", temperature="0")
        assert r.status_code == 200, r.text
        out = result(owner, r.json()["request_id"])
        assert out["status"] == "completed", out
        seq = out["sequences"][0]
        assert 1 <= len(seq["tokens"]) <= 5 and len(seq["logprobs"]) == len(seq["tokens"]) == len(seq["pieces"])
        assert all(lp <= 0 and math.isfinite(lp) for lp in seq["logprobs"])
        assert out["prompt_tokens"]

    # Bad input: 4xx with a JSON body, never a 500.
    for bad in ({"model": "base:nope", "prompt": "x"}, {"model": f"base:{MODEL_NAME}", "prompt": ""},
                {"model": f"base:{MODEL_NAME}", "prompt": "x", "max_tokens": "many"},
                {"model": f"base:{MODEL_NAME}", "prompt": "x", "max_tokens": "100000"}):
        r = sample(owner, **bad)
        assert r.status_code == 400 and r.json()["detail"], (bad, r.text)

    # Another tenant: no sign of the checkpoint, and the first tenant's result is a 404.
    rival = login(server, server.create_tenant(f"rival-{secrets.token_hex(3)}"))
    assert ckpt not in rival.get("/dashboard/playground/").text
    assert sample(rival, model=f"ckpt:{ckpt}", prompt="hi", max_tokens="2").status_code == 400
    mine = sample(owner, model=f"base:{MODEL_NAME}", prompt="hi", max_tokens="2").json()["request_id"]
    assert rival.get(f"/dashboard/playground/results/{mine}").status_code == 404
