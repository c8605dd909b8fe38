"""The sample operation: decode from the base model with the checkpoint's adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dataclasses
import logging

import numpy as np
from tinker import types as T
from tinker.proto import tinker_public_pb2 as pb

from engine.types import SampleRequest, SampleResult, SampleSpec, UserInputError
from sampling_app.actions import checkpoint_still_readable
from sampling_app.specs import sample_spec_from_request
from training_app import protocol
from training_app.checkpoint_paths import absolute
from workers.executor import BatchHandler, Outcome, handles_batch
from training_app.models import Operation

if TYPE_CHECKING:  # importing the engine loads torch: keep it out of views and manage.py
    from engine.runtime import Engine

logger = logging.getLogger(__name__)


def _sample_request(engine: Engine, op: Operation) -> tuple[SampleRequest, tuple[T.SampleRequest, SampleSpec]]:
    """The engine request of a sample operation, and what encoding its result needs."""
    sampler = op.sampling_session
    assert sampler is not None
    body = T.SampleRequest.model_validate(op.request)
    spec = sample_spec_from_request(body)
    eos = engine.host(sampler.base_model).eos_token_id
    if (spec.stop_strings or spec.stop_token_seqs) and eos is not None:
        # Explicit stops apply in addition to EOS, as in vLLM; only stop=[] disables EOS.
        spec = dataclasses.replace(spec, stop_token_seqs=(spec.stop_token_seqs or []) + [[eos]])
    adapter_dir = None
    if sampler.model_path:
        # Checked again here, not only at admission: the owner may have unpublished
        # or deleted the checkpoint while this request waited in the queue.
        if sampler.checkpoint is None or not checkpoint_still_readable(sampler):
            raise UserInputError(
                f"checkpoint {sampler.model_path} is no longer available (unpublished, deleted or expired)")
        adapter_dir = str(absolute(sampler.checkpoint.storage_path))
    return SampleRequest(sampler.base_model, adapter_dir, spec), (body, spec)


def _sample_outcome(op: Operation, context: tuple[T.SampleRequest, SampleSpec], result: SampleResult) -> Outcome:
    body, spec = context
    blob = protocol.encode_sample_response(result, spec.topk_prompt_logprobs, spec.topk_sample_logprobs)
    blob = _add_prompt_extras(blob, result, body.target_prompt_logprobs)
    sampled = sum(len(s.tokens) for s in result.sequences)
    return Outcome(blob=blob, num_tokens=len(spec.prompt) + sampled,
                   prefill_tokens=len(spec.prompt), sampled_tokens=sampled)


# Queued sample requests (of any tenants and adapters) go to the engine together.
handles_batch(Operation.Kind.SAMPLE, BatchHandler(
    prepare=_sample_request,
    run=lambda engine, requests: engine.sample_many(requests),
    finish=_sample_outcome,
))


def _add_prompt_extras(blob: bytes, result: SampleResult, target_request: T.TensorData | None) -> bytes:
    """Add target_prompt_logprobs and prompt_alt_tokens to an encoded SampleResponse.

    target_prompt_logprobs comes back in the layout it was asked in: dense, or
    CSR with the request's own row pointers and columns (only the listed cells).
    """
    if result.target_prompt_logprobs is None and result.prompt_alt_tokens is None:
        return blob
    out = pb.SampleResponse.FromString(blob)
    if result.target_prompt_logprobs is not None and target_request is not None:
        values = np.asarray(result.target_prompt_logprobs, dtype=np.float32)  # [P-1, K]
        t = out.target_prompt_logprobs
        t.dtype = pb.DTYPE_FLOAT32
        t.shape.extend(values.shape)
        if target_request.sparse_crow_indices is not None:
            crow = np.asarray(target_request.sparse_crow_indices, dtype=np.int64)
            col = np.asarray(target_request.sparse_col_indices, dtype=np.int64)
            rows = np.repeat(np.arange(len(crow) - 1), np.diff(crow))
            t.sparse_csr.values = values[rows, col].astype(np.float32).tobytes()
            t.sparse_csr.crow_indices = crow.tobytes()
            t.sparse_csr.col_indices = col.tobytes()
        else:
            t.dense = values.tobytes()
    if result.prompt_alt_tokens is not None and result.prompt_alt_logprobs is not None:
        tokens = np.asarray(result.prompt_alt_tokens, dtype=np.int64)
        logprobs = np.asarray(result.prompt_alt_logprobs, dtype=np.float32)
        alt = out.prompt_alt_tokens
        alt.tokens.dtype = pb.DTYPE_INT64
        alt.tokens.shape.extend(tokens.shape)
        alt.tokens.dense = tokens.tobytes()
        alt.logprobs.dtype = pb.DTYPE_FLOAT32
        alt.logprobs.shape.extend(logprobs.shape)
        alt.logprobs.dense = logprobs.tobytes()
    return out.SerializeToString()
