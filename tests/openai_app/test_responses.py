"""Unit tests of the OpenAI layer's text handling (no server): decoding, stop strings, SSE framing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tinker.proto import tinker_public_pb2 as pb

from openai_app import responses
from openai_app.tokenization import TextCodec


@pytest.fixture(scope="module")
def codec(tiny_model_dir: Path) -> TextCodec:
    from transformers import AutoTokenizer

    return TextCodec(AutoTokenizer.from_pretrained(tiny_model_dir))


def _blob(sequences: list[tuple[list[int], str]]) -> bytes:
    out = pb.SampleResponse()
    for tokens, stop in sequences:
        s = out.sequences.add()
        s.stop_reason = pb.STOP_REASON_STOP if stop == "stop" else pb.STOP_REASON_LENGTH
        s.tokens = np.asarray(tokens, dtype=np.int32).tobytes()
        s.logprobs = np.full(len(tokens), -0.5, dtype=np.float32).tobytes()
    return out.SerializeToString()


def test_pieces_rebuild_the_text_even_inside_multibyte_characters(codec: TextCodec) -> None:
    text = "Grüße, café 東京 🙂 the model"
    tokens = codec.encode(text)
    pieces = codec.pieces(tokens)
    assert len(pieces) == len(tokens)
    assert "".join(pieces) == codec.decode(tokens) == text
    assert not any("\ufffd" in p for p in pieces)


def test_stop_string_is_cut_with_everything_after_it(codec: TextCodec) -> None:
    tokens = codec.encode("one two three four")
    [choice] = responses.decode_choices(codec, [_blob([(tokens, "length")])], stop=[" three"])
    assert choice.text == "one two" and choice.finish_reason == "stop"
    assert len(choice.tokens) == len(choice.pieces) == len(choice.logprobs) <= len(tokens)
    [free] = responses.decode_choices(codec, [_blob([(tokens, "length")])], stop=["absent"])
    assert free.text == "one two three four" and free.finish_reason == "length"


def test_choices_of_several_prompts_are_numbered_in_order(codec: TextCodec) -> None:
    a, b = codec.encode("one"), codec.encode("two")
    blobs = [_blob([(a, "stop"), (b, "length")]), _blob([(b, "stop")])]
    choices = responses.decode_choices(codec, blobs, stop=[])
    assert [(c.index, c.text, c.finish_reason) for c in choices] == [
        (0, "one", "stop"), (1, "two", "length"), (2, "two", "stop")]


def test_chat_stream_has_openai_framing(codec: TextCodec) -> None:
    tokens = codec.encode("the model")
    answer = responses.Answer(id="chatcmpl-x", created=1, model="m", prompt_tokens=3,
                              choices=responses.decode_choices(codec, [_blob([(tokens, "stop")])], stop=[]))
    events = list(responses.sse(responses.chat_chunks(answer, codec, with_logprobs=False, include_usage=True)))
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "the model"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(tokens)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


def test_chat_template_of_the_tokenizer_wins_over_the_fallback(codec: TextCodec) -> None:
    messages = [{"role": "user", "content": "hi"}]
    fallback = codec.decode(codec.render_chat(messages))
    assert "<|im_start|>user" in fallback and fallback.rstrip().endswith("assistant")
    codec.tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    try:
        assert codec.decode(codec.render_chat(messages)) == "[user] hi\n"
    finally:
        codec.tokenizer.chat_template = None
