"""Hostile and malformed input: a 4xx (or a failed future with category "user"), never a 5xx,
and never memory the request's size did not earn. Run against SQLite and PostgreSQL.

Each case here once crashed or bloated the server (the hardening issue, items 2, 3 and 5).
Memory is read from /proc/<server pid>/status: the peak RSS is reset before each hostile
request (``clear_refs``) so any transient allocation of hundreds of MB shows up.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tinker
from tinker import types
from tinker.proto import tinker_public_pb2 as pb

from tests.api.conftest import DbServer
from tests.api.helpers import datum, post, proto_forward_backward, wait_future
from tests.conftest import MODEL_NAME

# A request refused up front allocates next to nothing; the bugs grew the server by 0.9-22 GB.
MAX_GROWTH_MB = 150


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


class MemoryWatch:
    """Peak RSS of the server during a block, relative to its RSS before it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> "MemoryWatch":
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.before = rss_mb(self.pid)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.growth = rss_mb(self.pid, "VmHWM") - self.before


def new_session(srv: DbServer, key: str) -> str:
    r = post(srv.server, "create_session", key, {"tags": [], "sdk_version": "0.38.0", "user_metadata": {}})
    assert r.status_code == 200, r.text
    return str(r.json()["session_id"])


def new_run(srv: DbServer, key: str) -> str:
    session = new_session(srv, key)
    r = post(srv.server, "create_model", key, {"session_id": session, "model_seq_id": 0, "base_model": MODEL_NAME,
                                                "lora_config": {"rank": 4}})
    assert r.status_code == 200, r.text
    assert wait_future(srv.server, key, r.json()["request_id"]).status_code == 200
    return str(r.json()["model_id"])


def new_sampler(srv: DbServer, key: str) -> str:
    session = new_session(srv, key)
    r = post(srv.server, "create_sampling_session", key,
             {"session_id": session, "sampling_session_seq_id": 0, "base_model": MODEL_NAME})
    assert r.status_code == 200, r.text
    return str(r.json()["sampling_session_id"])


def sample_body(sampler: str, seq_id: int, num_samples: int, max_tokens: int = 1, **extra: Any) -> dict[str, Any]:
    return {"sampling_session_id": sampler, "seq_id": seq_id, "num_samples": num_samples,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]},
            "sampling_params": {"max_tokens": max_tokens, "temperature": 1.0}, **extra}


def assert_4xx(r: httpx.Response, *words: str) -> dict[str, Any]:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    assert body.get("detail"), body
    for word in words:
        assert word in str(body["detail"]), body
    return body


def assert_user_failure(srv: DbServer, key: str, r: httpx.Response, *words: str) -> None:
    """An ordered training operation: accepted as a future that fails with category user."""
    assert r.status_code == 200, r.text
    done = wait_future(srv.server, key, r.json()["request_id"])
    body = done.json()
    assert body.get("category") == "user", body
    for word in words:
        assert word in body["error"], body


def sdk_flow_works(srv: DbServer, key: str) -> None:
    """The ordinary path still works: train a step, sample from the base model."""
    client = tinker.ServiceClient(base_url=srv.server.url, api_key=key)
    training = client.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=120)
    out = training.forward_backward([datum([1, 2, 3, 4], [2, 3, 4, 5])], "cross_entropy").result(timeout=120)
    assert out.metrics["loss:sum"] > 0
    training.optim_step(types.AdamParams(learning_rate=1e-3)).result(timeout=120)
    sampler = client.create_sampling_client(base_model=MODEL_NAME).result(timeout=120)
    sample = sampler.sample(prompt=types.ModelInput.from_ints([1, 2, 3]), num_samples=2,
                            sampling_params=types.SamplingParams(max_tokens=3, temperature=0.0)).result(timeout=120)
    assert len(sample.sequences) == 2


# -- item 2 and 3: sizes that used to be allocated in full ------------------------------


def test_huge_num_samples_is_refused_with_bounded_memory(db_server: DbServer) -> None:
    key = db_server.server.keys["alice"]
    sampler = new_sampler(db_server, key)
    for seq_id, n in enumerate((2**31 - 1, 50_000, 129), start=1):
        with MemoryWatch(db_server.pid) as mem:
            r = post(db_server.server, "asample", key, sample_body(sampler, seq_id, n), timeout=30)
        assert_4xx(r, f"num_samples {n}", "128", "TUFT_MAX_NUM_SAMPLES")
        assert r.status_code == 400
        assert mem.growth < MAX_GROWTH_MB, f"num_samples={n} grew the server by {mem.growth:.0f} MB"
    # At the limit it is served.
    r = post(db_server.server, "asample", key, sample_body(sampler, 10, 128))
    assert r.status_code == 200, r.text
    done = wait_future(db_server.server, key, r.json()["request_id"], timeout=120)
    assert done.status_code == 200 and done.headers["content-type"] == "application/x-protobuf"
    sdk_flow_works(db_server, key)


def sparse_target(shape: list[int]) -> pb.Tensor:
    tensor = pb.Tensor(dtype=pb.DTYPE_INT64, shape=shape)
    tensor.sparse_csr.values = np.array([5], dtype=np.int64).tobytes()
    tensor.sparse_csr.crow_indices = np.array([0] + [1] * shape[0], dtype=np.int64).tobytes()
    tensor.sparse_csr.col_indices = np.array([0], dtype=np.int64).tobytes()
    return tensor


def test_sparse_shape_claiming_gigabytes_is_refused_before_allocation(db_server: DbServer) -> None:
    key = db_server.server.keys["alice"]
    run = new_run(db_server, key)
    msg = pb.ForwardBackwardRequest.FromString(proto_forward_backward(run, 1, [datum([7], [8])]))
    msg.data[0].loss_fn_inputs["target_tokens"].CopyFrom(sparse_target([1, 30_000_000]))
    body = msg.SerializeToString()
    assert len(body) < 200
    with MemoryWatch(db_server.pid) as mem:
        r = post(db_server.server, "forward_backward", key, content=body, content_type="application/x-protobuf")
        assert_user_failure(db_server, key, r, "30000000", "TUFT_MAX_FWDBWD_TENSOR_ELEMENTS")
    assert mem.growth < MAX_GROWTH_MB, f"a {len(body)}-byte request grew the server by {mem.growth:.0f} MB"

    # A sparse target_prompt_logprobs of a sample request claiming a huge width.
    sampler = new_sampler(db_server, key)
    target = {"data": [5], "dtype": "int64", "shape": [2, 30_000_000],
              "sparse_crow_indices": [0, 1, 1], "sparse_col_indices": [0]}
    with MemoryWatch(db_server.pid) as mem:
        r = post(db_server.server, "asample", key, sample_body(sampler, 1, 1, target_prompt_logprobs=target))
    assert_4xx(r, "target_prompt_logprobs", "30000000")
    assert mem.growth < MAX_GROWTH_MB

    # The run was not disturbed: its next operation (seq 2) trains normally.
    ok = post(db_server.server, "forward_backward", key,
              content=proto_forward_backward(run, 2, [datum([1, 2, 3], [2, 3, 4])]),
              content_type="application/x-protobuf")
    assert ok.status_code == 200
    assert wait_future(db_server.server, key, ok.json()["request_id"]).headers["content-type"] == \
        "application/x-protobuf"
    sdk_flow_works(db_server, key)


def zstd_frame_claiming(size: int) -> bytes:
    """A zstd frame header declaring ``size`` bytes of content, followed by one empty raw block."""
    return b"\x28\xb5\x2f\xfd" + bytes([0xC0]) + struct.pack("<Q", size) + b"\x01\x00\x00"


def test_bodies_are_bounded(db_server: DbServer) -> None:
    key = db_server.server.keys["alice"]
    with MemoryWatch(db_server.pid) as mem:
        r = post(db_server.server, "forward_backward", key, content=zstd_frame_claiming(2**40),
                 content_type="application/x-protobuf")
        assert_4xx(r)
        # Real zstd data that expands past TUFT_MAX_BODY_BYTES (2 MiB here) is a 413.
        import zstandard

        bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 * 1024 * 1024))
        r = httpx.post(f"{db_server.server.url}/api/v1/forward_backward", content=bomb, timeout=60,
                       headers={"X-API-Key": key, "Content-Type": "application/x-protobuf",
                                "Content-Encoding": "zstd"})
        assert_4xx(r, "TUFT_MAX_BODY_BYTES")
        assert r.status_code == 413
        r = post(db_server.server, "create_session", key, content=b'{"tags": ["' + b"x" * (3 * 1024 * 1024) + b'"]}')
        assert r.status_code == 413 and "TUFT_MAX_BODY_BYTES" in r.json()["detail"]
    assert mem.growth < MAX_GROWTH_MB


# -- item 5: ordinary bad input that was a 5xx ---------------------------------------------

DEEP = b"[" * 50_000 + b"]" * 50_000
JSON_ROUTES = [
    "create_session", "session_heartbeat", "create_model", "get_info", "optim_step", "save_weights",
    "save_weights_for_sampler", "load_weights", "save_weights_external", "retrieve_future",
    "create_sampling_session", "asample", "weights_info", "forward_backward",
]  # (client/config, telemetry and a few others never read their body)


def test_deeply_nested_json_is_400_on_every_route(db_server: DbServer) -> None:
    key = db_server.server.keys["alice"]
    for route in JSON_ROUTES:
        r = post(db_server.server, route, key, content=DEEP)
        assert_4xx(r, "nested too deeply")


def test_bad_values_are_4xx(db_server: DbServer) -> None:
    srv, key = db_server.server, db_server.server.keys["alice"]
    session = new_session(db_server, key)
    meta = {"tags": [], "sdk_version": "0.38.0", "user_metadata": {}}
    lora = {"rank": 4}

    def model(**fields: Any) -> dict[str, Any]:
        return {"session_id": session, "model_seq_id": 5, "base_model": MODEL_NAME, "lora_config": lora, **fields}

    cases: list[tuple[str, httpx.Response, tuple[str, ...]]] = [
        ("too many query parameters",
         httpx.get(f"{srv.url}/api/v1/sessions?" + "&".join(f"p{i}=1" for i in range(1100)),
                   headers={"X-API-Key": key}, timeout=30), ("DATA_UPLOAD_MAX_NUMBER_FIELDS",)),
        ("create_model without lora_config",
         post(srv, "create_model", key, {"session_id": session, "model_seq_id": 1, "base_model": MODEL_NAME}),
         ("lora_config",)),
        ("offset beyond int64", httpx.get(f"{srv.url}/api/v1/sessions?offset={2**70}", headers={"X-API-Key": key},
                                          timeout=30), ("offset",)),
        ("limit beyond int64", httpx.get(f"{srv.url}/api/v1/checkpoints?limit={2**64}", headers={"X-API-Key": key},
                                         timeout=30), ("limit",)),
        ("model_seq_id 2^31", post(srv, "create_model", key, model(model_seq_id=2**31)), ("model_seq_id",)),
        ("model_seq_id beyond int64", post(srv, "create_model", key, model(model_seq_id=2**70)), ("model_seq_id",)),
        ("lora seed beyond int64", post(srv, "create_model", key, model(lora_config={"rank": 4, "seed": 2**64})),
         ("seed",)),
        ("sampling_session_seq_id 2^31",
         post(srv, "create_sampling_session", key, {"session_id": session, "sampling_session_seq_id": 2**31,
                                                   "base_model": MODEL_NAME}), ("sampling_session_seq_id",)),
        ("NUL in a tag", post(srv, "create_session", key, {**meta, "tags": ["a\x00b"]}), ("NUL",)),
        ("NUL in user_metadata", post(srv, "create_session", key, {**meta, "user_metadata": {"k": "v\x00"}}),
         ("NUL",)),
        ("NUL in a body id", post(srv, "session_heartbeat", key, {"session_id": session + "\x00"}), ("NUL",)),
        ("NUL in a path id", httpx.get(f"{srv.url}/api/v1/sessions/{session}%00", headers={"X-API-Key": key},
                                       timeout=30), ()),
        ("NUL in a checkpoint path id",
         httpx.get(f"{srv.url}/api/v1/training_runs/x%00/checkpoints/weights/y", headers={"X-API-Key": key},
                   timeout=30), ()),
        ("display_name > 200", post(srv, "create_session", key, {**meta, "display_name": "d" * 201}),
         ("display_name", "200")),
        ("sdk_version > 40", post(srv, "create_session", key, {**meta, "sdk_version": "9" * 41}),
         ("sdk_version", "40")),
        ("X-Idempotency-Key > 100",
         httpx.post(f"{srv.url}/api/v1/create_session", json=meta, timeout=30,
                    headers={"X-API-Key": key, "X-Idempotency-Key": "k" * 101}), ("X-Idempotency-Key", "100")),
        ("NaN literal", post(srv, "create_session", key, content=b'{"tags": [], "sdk_version": NaN}'), ()),
        ("lone surrogate (found by the fuzzer)",
         post(srv, "session_heartbeat", key, content=b'{"session_id": "\\ud800"}'), ("surrogate",)),
        ("static path traversal", httpx.get(f"{srv.url}/static/%2e%2e/%2e%2e/etc/passwd", timeout=30), ()),
    ]
    for name, r, words in cases:
        assert 400 <= r.status_code < 500, f"{name}: {r.status_code} {r.text[:300]}"
        assert r.headers["content-type"].startswith("application/json"), f"{name}: {r.headers['content-type']}"
        detail = r.json()["detail"]
        for word in words:
            assert word in str(detail), f"{name}: {detail}"


def test_bad_values_of_ordered_operations_fail_their_future(db_server: DbServer) -> None:
    srv, key = db_server.server, db_server.server.keys["alice"]
    run = new_run(db_server, key)
    # learning_rate=1e999 is infinity once parsed: the user's error, not the server's.
    r = post(srv, "optim_step", key, content=(
        b'{"model_id": "' + run.encode() + b'", "seq_id": 1, "adam_params": {"learning_rate": 1e999}}'))
    assert_user_failure(db_server, key, r, "learning_rate", "finite")
    # Token bytes that are not whole int32 values.
    msg = pb.ForwardBackwardRequest.FromString(proto_forward_backward(run, 2, [datum([1, 2, 3], [2, 3, 4])]))
    msg.data[0].model_input[0].encoded_text.tokens += b"\x01"
    r = post(srv, "forward_backward", key, content=msg.SerializeToString(), content_type="application/x-protobuf")
    assert_user_failure(db_server, key, r, "multiple of 4")
    # seq_id 2^31 of an ordered operation (JSON): refused before it takes a place in the order.
    r = post(srv, "optim_step", key, {"model_id": run, "seq_id": 2**31, "adam_params": {"learning_rate": 1e-3}})
    assert_4xx(r, "seq_id")
    r = post(srv, "save_weights_for_sampler", key, {"model_id": run, "seq_id": 3, "sampling_session_seq_id": 2**40})
    assert_user_failure(db_server, key, r, "sampling_session_seq_id")
    # The run goes on: seq 4 trains.
    ok = post(srv, "forward_backward", key, content=proto_forward_backward(run, 4, [datum([1, 2, 3], [2, 3, 4])]),
              content_type="application/x-protobuf")
    assert wait_future(srv, key, ok.json()["request_id"]).headers["content-type"] == "application/x-protobuf"
    sdk_flow_works(db_server, key)


def test_sample_values_are_4xx(db_server: DbServer) -> None:
    srv, key = db_server.server, db_server.server.keys["alice"]
    sampler = new_sampler(db_server, key)
    cases = [
        (sample_body(sampler, 2**31, 1), "seq_id"),
        (sample_body(sampler, 1, 1, sampling_params={"max_tokens": 1, "seed": 2**64}), "seed"),
        (sample_body(sampler, 1, 1, max_tokens=2**70), "max_model_len"),
    ]
    for body, word in cases:
        assert_4xx(post(srv, "asample", key, body), word)
    # 1e999 parses as infinity (the client library here would refuse to send inf itself).
    raw = json.dumps(sample_body(sampler, 1, 1)).replace('"temperature": 1.0', '"temperature": 1e999')
    assert_4xx(post(srv, "asample", key, content=raw.encode()), "temperature")
