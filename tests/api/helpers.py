"""Small helpers shared by API tests."""

from __future__ import annotations

from typing import Any

import httpx
from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto

from tests.conftest import LiveServer


def datum(tokens: list[int], targets: list[int], weights: list[float] | None = None) -> types.Datum:
    inputs: dict[str, Any] = {"target_tokens": types.TensorData(data=targets, dtype="int64", shape=[len(targets)])}
    if weights is not None:
        inputs["weights"] = types.TensorData(data=weights, dtype="float32", shape=[len(weights)])
    return types.Datum(model_input=types.ModelInput.from_ints(tokens), loss_fn_inputs=inputs)


def completion_datum(prompt: list[int], completion: list[int]) -> types.Datum:
    """Train only on the completion: position i predicts token i+1, prompt positions weigh 0."""
    full = prompt + completion
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(completion)
    return datum(full[:-1], full[1:], weights)


def proto_forward_backward(model_id: str, seq_id: int, data: list[types.Datum], loss_fn: str = "cross_entropy",
                           forward_only: bool = False) -> bytes:
    request = types.ForwardBackwardRequest(
        model_id=model_id, seq_id=seq_id,
        forward_backward_input=types.ForwardBackwardInput(data=data, loss_fn=loss_fn),
    )
    msg = forward_backward_request_to_proto(request)
    msg.forward_only = forward_only
    return msg.SerializeToString()


# One client for the helpers' requests: httpx.post() builds a client, and with it a TLS
# context (about 40 ms of CPU), for every request. No keep-alive, so each request still
# opens a connection of its own, as before (servers come and go between tests).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


def post(server: LiveServer, path: str, key: str, body: Any = None, content: bytes | None = None,
         content_type: str = "application/json", timeout: float = 60) -> httpx.Response:
    headers = {"X-API-Key": key, "Content-Type": content_type}
    if content is not None:
        return HTTP.post(f"{server.url}/api/v1/{path}", content=content, headers=headers, timeout=timeout)
    return HTTP.post(f"{server.url}/api/v1/{path}", json=body if body is not None else {}, headers=headers,
                     timeout=timeout)


def get(server: LiveServer, path: str, key: str) -> httpx.Response:
    return HTTP.get(f"{server.url}/api/v1/{path}", headers={"X-API-Key": key}, timeout=30)


def wait_future(server: LiveServer, key: str, request_id: str, timeout: float = 60) -> httpx.Response:
    """Poll retrieve_future until it is no longer try_again (bounded)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = post(server, "retrieve_future", key, {"request_id": request_id, "allow_metadata_only": False})
        if r.headers.get("content-type", "").startswith("application/json") and r.json().get("type") == "try_again":
            continue
        return r
    raise AssertionError(f"future {request_id} did not finish in {timeout}s")
