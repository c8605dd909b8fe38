"""Protobuf wire formats of the Tinker API, reusing the SDK's compiled schema.

forward_backward requests arrive as ``tinker_public.ForwardBackwardRequest``;
forward/forward_backward and sample results must be returned as protobuf
(``ForwardBackwardOutput``, ``SampleResponse``): the SDK rejects JSON for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from google.protobuf.message import DecodeError
from tinker.proto import tinker_public_pb2 as pb

from engine.types import Datum, ForwardBackwardResult, SampleResult, Tensor
from tuft_project.exceptions import BadRequest

_NP_DTYPES = {pb.DTYPE_FLOAT32: np.float32, pb.DTYPE_INT64: np.int64, pb.DTYPE_INT32: np.int32}
_DTYPE_NAMES = {pb.DTYPE_FLOAT32: "float32", pb.DTYPE_INT64: "int64", pb.DTYPE_INT32: "int64"}


@dataclass(frozen=True)
class ForwardBackwardCall:
    model_id: str
    seq_id: int
    loss_fn: str
    loss_fn_config: dict[str, float | str]
    forward_only: bool
    data: list[Datum]


def parse_forward_backward(body: bytes) -> pb.ForwardBackwardRequest:
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except DecodeError as exc:
        raise BadRequest(f"malformed protobuf ForwardBackwardRequest: {exc}") from None
    if not msg.model_id:
        raise BadRequest("ForwardBackwardRequest.model_id is required")
    if msg.seq_id < 1:
        raise BadRequest("ForwardBackwardRequest.seq_id must be >= 1")
    # These strings are stored (the operation's request, its run lookup); PostgreSQL refuses NUL.
    if any("\x00" in text for text in (msg.model_id, msg.loss_fn, *msg.loss_fn_config, *msg.loss_fn_config_v2)):
        raise BadRequest("ForwardBackwardRequest strings must not contain NUL characters")
    return msg


def count_tokens(msg: pb.ForwardBackwardRequest) -> int:
    """Input tokens of every datum, counted from the byte lengths: nothing is decoded."""
    total = 0
    for index, datum in enumerate(msg.data):
        for chunk in datum.model_input:
            if chunk.WhichOneof("chunk") == "encoded_text":
                size = len(chunk.encoded_text.tokens)
                if size % 4:
                    raise BadRequest(
                        f"datum {index}: encoded_text.tokens has {size} bytes, not a multiple of 4 (int32)"
                    )
                total += size // 4
    return total


def count_body_tokens(body: bytes) -> int:
    """Input tokens of a ForwardBackwardRequest body, without decoding the tensors (0 if malformed).

    The scheduler's batch budget uses it; validation happens in ``decode_forward_backward``.
    """
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
        return count_tokens(msg)
    except (DecodeError, BadRequest):
        return 0


def decode_forward_backward(body: bytes) -> ForwardBackwardCall:
    """Decode and validate the wire request into engine data (raises BadRequest)."""
    return decode_forward_backward_message(parse_forward_backward(body))


def decode_forward_backward_message(msg: pb.ForwardBackwardRequest) -> ForwardBackwardCall:
    """``decode_forward_backward`` of an already parsed message."""
    config: dict[str, float | str] = {k: float(v) for k, v in msg.loss_fn_config.items()}
    for key, value in msg.loss_fn_config_v2.items():  # v2 wins: it also carries strings
        config[key] = value.text if value.WhichOneof("value") == "text" else float(value.number)
    if not msg.data:
        raise BadRequest("forward_backward needs at least one datum")
    count_tokens(msg)  # checks the token byte lengths
    _check_tensor_sizes(msg)  # before any tensor is expanded or copied
    data = [_decode_datum(i, d) for i, d in enumerate(msg.data)]
    return ForwardBackwardCall(
        model_id=msg.model_id,
        seq_id=msg.seq_id,
        loss_fn=msg.loss_fn or "cross_entropy",
        loss_fn_config=config,
        forward_only=msg.forward_only,
        data=data,
    )


def _tensor_elements(what: str, msg: pb.Tensor) -> int:
    """Elements ``msg`` holds once dense, from its shape alone; refuse shapes no loss can use."""
    shape = list(msg.shape)
    if not shape and not msg.HasField("sparse_csr"):
        itemsize = np.dtype(_NP_DTYPES.get(msg.dtype, np.float32)).itemsize
        return len(msg.dense) // itemsize  # 1-D, its length given by the data itself
    # Losses take [T] or [T, K] inputs (engine/losses.py).
    if not 1 <= len(shape) <= 2 or any(d < 0 for d in shape):
        raise BadRequest(f"{what}: shape {shape} is not [T] or [T, K] with non-negative sizes")
    return math.prod(shape)


def _check_tensor_sizes(msg: pb.ForwardBackwardRequest) -> None:
    """Refuse a request whose tensors would expand past ``TUFT_MAX_FWDBWD_TENSOR_ELEMENTS``.

    A sparse tensor's shape comes from the client, so a 100-byte request could
    otherwise claim ``[1, 30000000]`` and be expanded into a dense array and a list.
    """
    limit = int(settings.TUFT_MAX_FWDBWD_TENSOR_ELEMENTS)
    total = 0
    for index, datum in enumerate(msg.data):
        for name, tensor in datum.loss_fn_inputs.items():
            total += _tensor_elements(f"datum {index} loss_fn_inputs[{name!r}]", tensor)
    if total > limit:
        raise BadRequest(
            f"loss_fn_inputs of this request hold {total} elements (dense), over the server limit of {limit} "
            "(TUFT_MAX_FWDBWD_TENSOR_ELEMENTS); send fewer data per request"
        )


def _decode_datum(index: int, datum: pb.Datum) -> Datum:
    tokens: list[int] = []
    for chunk in datum.model_input:
        kind = chunk.WhichOneof("chunk")
        if kind != "encoded_text":
            raise BadRequest(f"datum {index}: {kind} input chunks are not supported; send token ids")
        tokens.extend(np.frombuffer(chunk.encoded_text.tokens, dtype=np.int32).tolist())
    inputs = {name: _decode_tensor(f"datum {index} loss_fn_inputs[{name!r}]", t)
              for name, t in datum.loss_fn_inputs.items()}
    return Datum(tokens=tokens, loss_fn_inputs=inputs)


def _decode_tensor(what: str, msg: pb.Tensor) -> Tensor:
    np_dtype = _NP_DTYPES.get(msg.dtype)
    if np_dtype is None:
        raise BadRequest(f"{what}: unsupported dtype {msg.dtype}")
    shape = list(msg.shape)
    try:
        if msg.HasField("sparse_csr"):
            values = np.frombuffer(msg.sparse_csr.values, dtype=np_dtype)
            crow = np.frombuffer(msg.sparse_csr.crow_indices, dtype=np.int64)
            col = np.frombuffer(msg.sparse_csr.col_indices, dtype=np.int64)
            if len(shape) != 2 or len(crow) != shape[0] + 1:
                raise BadRequest(f"{what}: sparse tensors must be 2-D with len(crow_indices) = rows + 1")
            if len(col) != len(values) or (len(col) and not ((col >= 0).all() and (col < shape[1]).all())):
                raise BadRequest(f"{what}: col_indices must match values and lie in 0..{shape[1] - 1}")
            dense = np.zeros(shape, dtype=np_dtype)
            for row in range(shape[0]):
                lo, hi = int(crow[row]), int(crow[row + 1])
                dense[row, col[lo:hi]] = values[lo:hi]
            array = dense
        else:
            array = np.frombuffer(msg.dense, dtype=np_dtype)
            if not shape:  # the SDK omits the shape of 1-D TensorData built without one
                shape = [int(array.size)]
            array = array.reshape(shape)
    except (ValueError, IndexError) as exc:
        raise BadRequest(f"{what}: data does not match shape {shape}: {exc}") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"{what}: contains NaN or infinity")
    return Tensor(data=array.reshape(-1).tolist(), shape=shape, dtype=_DTYPE_NAMES[msg.dtype])


def encode_forward_backward_output(result: ForwardBackwardResult) -> bytes:
    out = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    for key, value in result.metrics.items():
        out.metrics[key] = value
    record = out.loss_fn_outputs.add()
    record.type_tag = "ArrayRecord"
    record.num_datums = len(result.outputs)
    names = sorted({n for o in result.outputs for n in o})
    for name in names:
        first = result.outputs[0][name]
        bt = record.fields[name]
        bt.dtype = pb.DTYPE_FLOAT32 if first.dtype == "float32" else pb.DTYPE_INT64
        np_dtype = np.float32 if first.dtype == "float32" else np.int64
        bt.trailing_shape.extend(first.shape[1:])
        arrays = [np.asarray(o[name].data, dtype=np_dtype) for o in result.outputs]
        offsets = np.cumsum([0] + [a.nbytes for a in arrays]).astype(np.int64)
        bt.data = b"".join(a.tobytes() for a in arrays)
        bt.offsets = offsets.tobytes()
    return out.SerializeToString()


def _encode_topk(target: pb.TopkLogprobs, rows: list[list[tuple[int, float]] | None], k: int) -> None:
    ids = np.zeros((len(rows), k), dtype=np.int32)
    lps = np.full((len(rows), k), -99999.0, dtype=np.float32)  # the SDK's "empty cell" sentinel
    for r, row in enumerate(rows):
        for c, (tok, lp) in enumerate((row or [])[:k]):
            ids[r, c] = tok
            lps[r, c] = lp
    target.token_ids = ids.tobytes()
    target.logprobs = lps.tobytes()
    target.k = k
    target.length = len(rows)


def encode_sample_response(result: SampleResult, topk_prompt: int = 0, topk_sample: int = 0) -> bytes:
    out = pb.SampleResponse()
    for seq in result.sequences:
        s = out.sequences.add()
        s.stop_reason = pb.STOP_REASON_STOP if seq.stop_reason == "stop" else pb.STOP_REASON_LENGTH
        s.tokens = np.asarray(seq.tokens, dtype=np.int32).tobytes()
        s.logprobs = np.asarray(seq.logprobs, dtype=np.float32).tobytes()
        if topk_sample and seq.topk is not None:
            _encode_topk(s.topk_sampled_logprobs, list(seq.topk), topk_sample)
    if result.prompt_logprobs is not None:
        values = [math.nan if v is None else v for v in result.prompt_logprobs]
        out.prompt_logprobs = np.asarray(values, dtype=np.float32).tobytes()
    if topk_prompt and result.topk_prompt_logprobs is not None:
        _encode_topk(out.topk_prompt_logprobs, list(result.topk_prompt_logprobs), topk_prompt)
    return out.SerializeToString()
