"""Translate the SDK's SampleRequest into the engine's SampleSpec (no torch here)."""

from __future__ import annotations

from typing import Any

from tinker import types as T

from engine.sample_checks import MAX_LOGPROBS_K, validate_sample_spec
from engine.types import SampleSpec, UserInputError
from tuft_project.runtime import get_config


def sample_spec_from_request(body: T.SampleRequest) -> SampleSpec:
    """Translate the SDK's SampleRequest into the engine's spec (raises UserInputError)."""
    params = body.sampling_params
    prompt = body.prompt.to_ints() if all(c.type == "encoded_text" for c in body.prompt.chunks) else None
    if prompt is None:
        raise UserInputError("only token (encoded_text) prompts are supported")
    stop = params.stop
    stop_token_seqs: list[list[int]] | None = None
    stop_strings: list[str] = []
    if isinstance(stop, str):
        stop_strings = [stop]
    elif isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop):
        stop_strings = list(stop)
    elif isinstance(stop, list) and all(isinstance(s, int) for s in stop):
        stop_token_seqs = [[s] for s in stop]
    elif stop is not None:
        raise UserInputError("sampling_params.stop must be a string, a list of strings or a list of token ids")
    spec = SampleSpec(
        prompt=prompt,
        num_samples=body.num_samples,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=params.seed,
        stop_token_seqs=stop_token_seqs,
        stop_strings=stop_strings,
        prompt_logprobs=bool(body.prompt_logprobs),
        topk_prompt_logprobs=body.topk_prompt_logprobs or 0,
        topk_sample_logprobs=body.topk_sample_logprobs or 0,
        prompt_logprobs_last_n=body.prompt_logprobs_last_n,
        target_prompt_ids=target_ids_from_request(body.target_prompt_logprobs, len(prompt)),
        prompt_alt_tokens_k=body.prompt_alt_tokens_k or 0,
    )
    validate_sample_spec(spec)
    return spec


def target_ids_from_request(td: Any, prompt_len: int) -> list[list[int]] | None:
    """The dense ``[len(prompt) - 1, K]`` id matrix of ``target_prompt_logprobs`` (-1 = none).

    Accepts the SDK's dense or sparse CSR ``TensorData``; cells a CSR tensor
    does not list are -1. The shape is checked before the matrix is built: a
    sparse tensor's shape is the client's claim, not the size of its data.
    """
    if td is None:
        return None
    if td.dtype != "int64":
        raise UserInputError(f"target_prompt_logprobs must be an int64 tensor of token ids, got {td.dtype}")
    shape = list(td.shape or [])
    if len(shape) != 2 or min(shape) < 0:
        raise UserInputError(f"target_prompt_logprobs must be 2-D [len(prompt) - 1, K], got shape {shape}")
    rows, cols = shape
    if rows != prompt_len - 1 or not 1 <= cols <= MAX_LOGPROBS_K:
        raise UserInputError(
            f"target_prompt_logprobs must have shape [len(prompt) - 1 = {prompt_len - 1}, K] with "
            f"1 <= K <= {MAX_LOGPROBS_K}, got {shape}"
        )
    data = [int(v) for v in td.data]
    if td.sparse_crow_indices is None and td.sparse_col_indices is None:
        if len(data) != rows * cols:
            raise UserInputError(f"target_prompt_logprobs has {len(data)} values for shape {shape}")
        return [data[r * cols:(r + 1) * cols] for r in range(rows)]
    crow, col = list(td.sparse_crow_indices or []), list(td.sparse_col_indices or [])
    if (len(crow) != rows + 1 or len(col) != len(data) or crow[0] != 0 or crow[-1] != len(data)
            or any(b < a for a, b in zip(crow, crow[1:])) or any(not 0 <= c < cols for c in col)):
        raise UserInputError("target_prompt_logprobs has inconsistent CSR indices for its shape")
    dense = [[-1] * cols for _ in range(rows)]
    for r in range(rows):
        for i in range(crow[r], crow[r + 1]):
            dense[r][col[i]] = data[i]
    return dense


def check_fits_model(spec: SampleSpec, base_model: str) -> None:
    """Refuse up front a prompt + max_tokens longer than the model's max_model_len."""
    model = next((m for m in get_config().models if m.model_name == base_model), None)
    if model is None:
        return  # the sampler reports the unknown model itself
    total = len(spec.prompt) + (spec.max_tokens or 1)
    if total > model.max_model_len:
        raise UserInputError(
            f"prompt ({len(spec.prompt)} tokens) + max_tokens ({spec.max_tokens or 1}) exceeds "
            f"max_model_len {model.max_model_len} of {base_model}"
        )
