"""Translate the SDK's SampleRequest into the engine's SampleSpec (no torch here)."""

from __future__ import annotations

from tinker import types as T

from engine.types import SampleSpec, UserInputError


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
    if body.prompt_logprobs_last_n is not None or body.prompt_alt_tokens_k or body.target_prompt_logprobs is not None:
        raise UserInputError(
            "prompt_logprobs_last_n, prompt_alt_tokens_k and target_prompt_logprobs are not supported yet"
        )
    return SampleSpec(
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
    )
