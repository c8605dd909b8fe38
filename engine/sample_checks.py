"""Checks of a sample request that need no loaded model (and no torch).

The server runs ``validate_sample_spec`` when a request arrives, so a bad
request is a 400 before anything is queued. Every sampler back end (HF, vLLM)
runs ``check_sample_for_model`` before decoding: the limits that depend on the
model (vocabulary, max_model_len) but not on the back end live here, once.
"""

from __future__ import annotations

import math

from engine.types import SampleSpec, UserInputError

# Decode budget when a request leaves max_tokens unset (the SDK omits it when None).
DEFAULT_MAX_TOKENS = 128

# Widest top-k / alternative-token / target-id request per position; bounds the work
# and the response size of one request (len(prompt) * k cells), as vLLM's max_logprobs does.
MAX_LOGPROBS_K = 64


def validate_sample_spec(spec: SampleSpec) -> None:
    """Raise ``UserInputError`` for a request no model could serve.

    Model-specific limits (vocabulary, max_model_len) are checked by the sampler.
    """
    if spec.num_samples < 1:
        raise UserInputError("num_samples must be at least 1")
    scored_positions = len(spec.prompt) - 1
    for name, k in (("topk_prompt_logprobs", spec.topk_prompt_logprobs),
                    ("topk_sample_logprobs", spec.topk_sample_logprobs),
                    ("prompt_alt_tokens_k", spec.prompt_alt_tokens_k)):
        if not 0 <= k <= MAX_LOGPROBS_K:
            raise UserInputError(f"{name} must be between 0 and {MAX_LOGPROBS_K}, got {k}")
    last_n = spec.prompt_logprobs_last_n
    if last_n is not None:
        if not (spec.prompt_logprobs or spec.topk_prompt_logprobs):
            raise UserInputError("prompt_logprobs_last_n applies to prompt logprobs; set prompt_logprobs")
        if not 1 <= last_n <= scored_positions:
            raise UserInputError(
                f"prompt_logprobs_last_n must be between 1 and len(prompt) - 1 = {scored_positions}, got {last_n}"
            )
    ids = spec.target_prompt_ids
    if ids is not None:
        if len(ids) != scored_positions or scored_positions == 0:
            raise UserInputError(
                f"target_prompt_logprobs must have len(prompt) - 1 = {scored_positions} rows, got {len(ids)}"
            )
        width = len(ids[0])
        if width < 1 or any(len(row) != width for row in ids):
            raise UserInputError("target_prompt_logprobs must be a rectangular [len(prompt) - 1, K] tensor, K >= 1")
        if width > MAX_LOGPROBS_K:
            raise UserInputError(f"target_prompt_logprobs may name at most {MAX_LOGPROBS_K} ids per position")
        if not any(t >= 0 for row in ids for t in row):
            raise UserInputError("target_prompt_logprobs names no token id (every cell is -1)")
        if any(t < -1 for row in ids for t in row):
            raise UserInputError("target_prompt_logprobs cells must be token ids or -1")
    if spec.max_tokens is not None and spec.max_tokens < 1:
        raise UserInputError("max_tokens must be at least 1")
    if not (math.isfinite(spec.temperature) and spec.temperature >= 0):
        raise UserInputError(f"temperature must be a finite number >= 0, got {spec.temperature}")
    if spec.seed is not None and not -(2**63) <= spec.seed < 2**64:
        raise UserInputError(f"seed must fit in 64 bits, got {spec.seed}")
    if not 0 < spec.top_p <= 1:
        raise UserInputError("top_p must be in (0, 1]")
    if spec.top_k == 0 or spec.top_k < -1:
        raise UserInputError("top_k must be -1 (off) or a positive number")


def check_sample_for_model(spec: SampleSpec, vocab_size: int, max_model_len: int) -> int:
    """Validate ``spec`` against one model; return the number of tokens to decode.

    Raises ``UserInputError`` (recoverable: the caller's input is at fault).
    """
    validate_sample_spec(spec)
    if not spec.prompt:
        raise UserInputError("prompt is empty")
    bad = [t for t in spec.prompt if not 0 <= t < vocab_size]
    if bad:
        raise UserInputError(f"prompt has token id {bad[0]} outside the vocabulary (0..{vocab_size - 1})")
    if len(spec.prompt) > max_model_len:
        raise UserInputError(f"prompt has {len(spec.prompt)} tokens, more than max_model_len {max_model_len}")
    if spec.target_prompt_ids is not None:
        bad = [t for row in spec.target_prompt_ids for t in row if t >= vocab_size]
        if bad:
            raise UserInputError(
                f"target_prompt_logprobs has token id {bad[0]} outside the vocabulary (0..{vocab_size - 1})"
            )
    if spec.stop_token_seqs is not None:
        bad = [t for seq in spec.stop_token_seqs for t in seq if not 0 <= t < vocab_size]
        if bad:
            raise UserInputError(f"stop has token id {bad[0]} outside the vocabulary (0..{vocab_size - 1})")
    room = max_model_len - len(spec.prompt)
    max_tokens = spec.max_tokens if spec.max_tokens is not None else min(DEFAULT_MAX_TOKENS, room)
    if max_tokens > room or max_tokens < 1:
        raise UserInputError(
            f"prompt ({len(spec.prompt)} tokens) + max_tokens ({max_tokens}) exceeds max_model_len {max_model_len}"
        )
    return max_tokens


def stop_sequences(spec: SampleSpec, eos_token_id: int | None) -> list[list[int]]:
    """The token sequences that end a sample: the request's, or EOS when it named none."""
    if spec.stop_token_seqs is not None:
        return [seq for seq in spec.stop_token_seqs if seq]
    return [[eos_token_id]] if eos_token_id is not None else []
