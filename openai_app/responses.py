"""OpenAI response bodies (and their streamed chunks) from finished sample operations."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from tinker import types as T
from tinker.proto.response_conv import deserialize_sample_response

from openai_app.tokenization import TextCodec


@dataclass
class Choice:
    """One sampled sequence, decoded: what both APIs report about it."""

    index: int
    tokens: list[int]
    pieces: list[str]  # text each token adds, already cut at a stop string
    finish_reason: str  # "stop" | "length"
    logprobs: list[float]
    topk: list[list[tuple[int, float]]] = field(default_factory=list)  # [len(tokens)][k]

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass
class Answer:
    id: str
    created: int
    model: str
    choices: list[Choice]
    prompt_tokens: int

    @property
    def usage(self) -> dict[str, int]:
        completion = sum(len(c.tokens) for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def decode_choices(codec: TextCodec, blobs: list[bytes], stop: list[str], first_index: int = 0) -> list[Choice]:
    """Decode the protobuf SampleResponses of a request's operations, in order."""
    choices: list[Choice] = []
    for blob in blobs:
        response: T.SampleResponse = deserialize_sample_response(blob)
        for seq in response.sequences:
            tokens = list(seq.tokens)
            pieces, cut = _cut_at_stop(codec.pieces(tokens), stop)
            topk = [list(row or []) for row in (seq.topk_logprobs or [])] if seq.topk_logprobs_np is not None else []
            choices.append(Choice(
                index=first_index + len(choices), tokens=tokens[:len(pieces)], pieces=pieces,
                finish_reason="stop" if cut or seq.stop_reason == "stop" else "length",
                logprobs=list(seq.logprobs or [])[:len(pieces)], topk=topk[:len(pieces)],
            ))
    return choices


def _cut_at_stop(pieces: list[str], stop: list[str]) -> tuple[list[str], bool]:
    """Drop the first stop string and everything after it, as OpenAI does (the sampler keeps it)."""
    text = "".join(pieces)
    at = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    if at < 0:
        return pieces, False
    kept: list[str] = []
    length = 0
    for piece in pieces:
        if length + len(piece) > at:
            if at > length:
                kept.append(piece[: at - length])
            break
        kept.append(piece)
        length += len(piece)
    return kept, True


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


# -- /completions ------------------------------------------------------------


def completion_logprobs(codec: TextCodec, choice: Choice, upto: int | None = None) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object of tokens ``[0:upto]``."""
    n = len(choice.tokens) if upto is None else upto
    offsets, at = [], 0
    for piece in choice.pieces[:n]:
        offsets.append(at)
        at += len(piece)
    return {
        "tokens": [codec.token_text(t) for t in choice.tokens[:n]],
        "token_logprobs": choice.logprobs[:n],
        "top_logprobs": [{codec.token_text(t): lp for t, lp in row} for row in choice.topk[:n]] if choice.topk else None,
        "text_offset": offsets,
    }


def completion_body(answer: Answer, codec: TextCodec, with_logprobs: bool) -> dict[str, Any]:
    return {
        "id": answer.id, "object": "text_completion", "created": answer.created, "model": answer.model,
        "choices": [
            {"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
             "logprobs": completion_logprobs(codec, c) if with_logprobs else None}
            for c in answer.choices
        ],
        "usage": answer.usage,
    }


def completion_chunks(answer: Answer, codec: TextCodec, with_logprobs: bool, include_usage: bool) -> Iterator[dict]:
    """One chunk per token of every choice, then each choice's finish, then (if asked) usage."""
    base = {"id": answer.id, "object": "text_completion", "created": answer.created, "model": answer.model}
    for c in answer.choices:
        for i, piece in enumerate(c.pieces):
            logprobs = None
            if with_logprobs:
                whole = completion_logprobs(codec, c, i + 1)
                logprobs = {k: (v[i:] if isinstance(v, list) else v) for k, v in whole.items()}
            yield {**base, "choices": [{"index": c.index, "text": piece, "finish_reason": None, "logprobs": logprobs}]}
        yield {**base, "choices": [{"index": c.index, "text": "", "finish_reason": c.finish_reason, "logprobs": None}]}
    if include_usage:
        yield {**base, "choices": [], "usage": answer.usage}


# -- /chat/completions -------------------------------------------------------


def _token_logprob(codec: TextCodec, token: int, logprob: float) -> dict[str, Any]:
    text = codec.token_text(token)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(codec: TextCodec, choice: Choice, positions: range) -> dict[str, Any]:
    content = []
    for i in positions:
        entry = _token_logprob(codec, choice.tokens[i], choice.logprobs[i])
        entry["top_logprobs"] = [_token_logprob(codec, t, lp) for t, lp in choice.topk[i]] if choice.topk else []
        content.append(entry)
    return {"content": content, "refusal": None}


def chat_body(answer: Answer, codec: TextCodec, with_logprobs: bool) -> dict[str, Any]:
    return {
        "id": answer.id, "object": "chat.completion", "created": answer.created, "model": answer.model,
        "choices": [
            {"index": c.index, "message": {"role": "assistant", "content": c.text, "refusal": None},
             "finish_reason": c.finish_reason,
             "logprobs": chat_logprobs(codec, c, range(len(c.tokens))) if with_logprobs else None}
            for c in answer.choices
        ],
        "usage": answer.usage,
    }


def chat_chunks(answer: Answer, codec: TextCodec, with_logprobs: bool, include_usage: bool) -> Iterator[dict]:
    """As OpenAI streams: a role delta, one content delta per token, a finish delta; then usage."""
    base = {"id": answer.id, "object": "chat.completion.chunk", "created": answer.created, "model": answer.model}
    for c in answer.choices:
        yield {**base, "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None, "logprobs": None}]}
        for i, piece in enumerate(c.pieces):
            logprobs = chat_logprobs(codec, c, range(i, i + 1)) if with_logprobs else None
            yield {**base, "choices": [{"index": c.index, "delta": {"content": piece},
                                        "finish_reason": None, "logprobs": logprobs}]}
        yield {**base, "choices": [{"index": c.index, "delta": {}, "finish_reason": c.finish_reason,
                                    "logprobs": None}]}
    if include_usage:
        yield {**base, "choices": [], "usage": answer.usage}


def sse(chunks: Iterator[dict]) -> Iterator[bytes]:
    """Server-sent events exactly as OpenAI frames them: ``data: {json}`` blocks, then ``[DONE]``."""
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"
