"""Unit tests of the request bounds, without a server: body parsers, the forward_backward
size checks and the model-free sample checks (the live-server regressions are in
tests/api/test_hostile_input.py)."""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
import pytest
import zstandard
from rest_framework.exceptions import ParseError
from tinker.proto import tinker_public_pb2 as pb

from engine.sample_checks import validate_sample_spec
from engine.types import SampleSpec, UserInputError
from training_app import protocol
from training_app.parsers import decompress_zstd
from tuft_project.exceptions import BadRequest
from tuft_project.parsers import BodyTooLarge, decode_json, read_body


def test_json_bodies_that_no_database_can_store_are_parse_errors() -> None:
    assert decode_json(b'{"a": [1, {"b": "\\ud83d\\ude00"}]}') == {"a": [1, {"b": "\U0001F600"}]}
    assert decode_json(b"  ") == {}
    for raw, message in [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"tags": ["a\\u0000"]}', "NUL"),
        (b'{"k\\u0000": 1}', "NUL"),
        (b'{"id": "\\ud800"}', "surrogate"),
        (b'{"x": NaN}', "NaN"),
        (b'{"x": -Infinity}', "Infinity"),
        (b"\xff\xfe", "parse error"),
    ]:
        with pytest.raises(ParseError, match=message):
            decode_json(raw)
    # 1e999 parses (as infinity): the views refuse it where it is used (see the module docstring).
    assert decode_json(b'{"lr": 1e999}')["lr"] == float("inf")


def test_bodies_and_zstd_output_are_bounded() -> None:
    assert read_body(io.BytesIO(b"x" * 10), limit=10) == b"x" * 10
    with pytest.raises(BodyTooLarge):
        read_body(io.BytesIO(b"x" * 11), limit=10)
    assert decompress_zstd(zstandard.ZstdCompressor().compress(b"abc" * 1000), limit=3000) == b"abc" * 1000
    with pytest.raises(BodyTooLarge):
        decompress_zstd(zstandard.ZstdCompressor().compress(b"\0" * 50_000_000), limit=1_000_000)
    # A header that claims 1 TiB of content: nothing of that size is allocated.
    header_only = b"\x28\xb5\x2f\xfd" + bytes([0xC0]) + struct.pack("<Q", 2**40) + b"\x01\x00\x00"
    assert decompress_zstd(header_only, limit=1_000_000) == b""
    with pytest.raises(ParseError, match="zstd"):
        decompress_zstd(b"not zstd", limit=1_000_000)


def request(tokens: bytes, tensor: pb.Tensor) -> pb.ForwardBackwardRequest:
    msg = pb.ForwardBackwardRequest(model_id="sess-x:train:0", seq_id=1, loss_fn="cross_entropy")
    d = msg.data.add()
    d.model_input.add().encoded_text.tokens = tokens
    d.loss_fn_inputs["target_tokens"].CopyFrom(tensor)
    return msg


def dense(values: list[int], shape: list[int] | None = None) -> pb.Tensor:
    t = pb.Tensor(dtype=pb.DTYPE_INT64, dense=np.array(values, dtype=np.int64).tobytes())
    t.shape.extend(shape or [])
    return t


def sparse(shape: list[int], crow: list[int], col: list[int], values: list[int]) -> pb.Tensor:
    t = pb.Tensor(dtype=pb.DTYPE_INT64, shape=shape)
    t.sparse_csr.values = np.array(values, dtype=np.int64).tobytes()
    t.sparse_csr.crow_indices = np.array(crow, dtype=np.int64).tobytes()
    t.sparse_csr.col_indices = np.array(col, dtype=np.int64).tobytes()
    return t


TOKENS = np.array([1, 2, 3], dtype=np.int32).tobytes()


def test_forward_backward_sizes_are_checked_before_decoding(settings: Any) -> None:
    settings.TUFT_MAX_FWDBWD_TENSOR_ELEMENTS = 1000
    call = protocol.decode_forward_backward_message(request(TOKENS, dense([2, 3, 4], [3])))
    assert call.data[0].tokens == [1, 2, 3] and call.data[0].loss_fn_inputs["target_tokens"].data == [2, 3, 4]
    assert protocol.count_tokens(request(TOKENS, dense([2, 3, 4]))) == 3
    ok = protocol.decode_forward_backward_message(request(TOKENS, sparse([3, 2], [0, 1, 1, 2], [1, 0], [7, 8])))
    assert ok.data[0].loss_fn_inputs["target_tokens"].data == [0, 7, 0, 0, 8, 0]

    with pytest.raises(BadRequest, match="multiple of 4"):
        protocol.count_tokens(request(TOKENS + b"\x01", dense([2, 3, 4])))
    with pytest.raises(BadRequest, match="30000000 elements.*TUFT_MAX_FWDBWD_TENSOR_ELEMENTS"):
        protocol.decode_forward_backward_message(request(TOKENS, sparse([1, 30_000_000], [0, 1], [0], [5])))
    with pytest.raises(BadRequest, match="not \\[T\\] or \\[T, K\\]"):
        protocol.decode_forward_backward_message(request(TOKENS, sparse([1, 1, 1], [0, 1], [0], [5])))
    with pytest.raises(BadRequest, match="non-negative"):
        protocol.decode_forward_backward_message(request(TOKENS, dense([1], [-1, -3])))
    with pytest.raises(BadRequest, match="col_indices"):
        protocol.decode_forward_backward_message(request(TOKENS, sparse([3, 2], [0, 1, 1, 1], [-1], [7])))
    with pytest.raises(BadRequest, match="NUL"):
        protocol.parse_forward_backward(pb.ForwardBackwardRequest(model_id="a\x00", seq_id=1).SerializeToString())


@pytest.mark.parametrize("changes, message", [
    ({"seed": 2**64}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
])
def test_sample_spec_values_that_used_to_fail_in_the_worker(changes: dict[str, Any], message: str) -> None:
    spec = SampleSpec(prompt=[1, 2, 3], num_samples=1, max_tokens=2, **changes)
    with pytest.raises(UserInputError, match=message):
        validate_sample_spec(spec)
    validate_sample_spec(SampleSpec(prompt=[1, 2, 3], num_samples=1, max_tokens=2, seed=2**64 - 1))


def test_metadata_with_infinite_numbers_is_refused_before_it_reaches_a_json_column() -> None:
    """Found by the fuzzer: user_metadata {"k": 1e999} made create_session a 500 on SQLite."""
    from tuft_project.exceptions import BadRequest
    from tuft_project.input_checks import check_metadata

    check_metadata("user_metadata", {"k": 1.5, "nested": [{"x": "y"}], "n": None})
    for bad in ({"k": float("inf")}, {"a": [{"b": float("nan")}]}):
        with pytest.raises(BadRequest, match="finite"):
            check_metadata("user_metadata", bad)
