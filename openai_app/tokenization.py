"""Text <-> tokens for the OpenAI endpoints, with the base model's own tokenizer.

The Tinker API speaks tokens only; the OpenAI API speaks text, so the server
tokenizes prompts, renders chat messages with the model's chat template and
decodes what the sampler produced. One tokenizer per base model is loaded on
first use and kept (an explicit registry, STYLE.md rule 12).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from tuft_project.model_config import TuftConfig

logger = logging.getLogger(__name__)

# Used when a tokenizer ships no chat template (the built-in tiny model has
# none): ChatML, the format of the Qwen family the built-in model imitates.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TextCodec:
    """A loaded tokenizer with the few operations the OpenAI endpoints need."""

    tokenizer: Any  # a transformers PreTrainedTokenizerBase

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` in the chat template, ending with the assistant's turn."""
        template = self.tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        return self.encode(str(text))

    def decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def token_text(self, token: int) -> str:
        """One token as text (may be part of a multi-byte character)."""
        return str(self.tokenizer.decode([token], skip_special_tokens=False))

    def pieces(self, tokens: list[int]) -> list[str]:
        """The text each token adds, for streaming; their concatenation is ``decode(tokens)``.

        A token ending inside a multi-byte character adds nothing until the
        token that completes it.
        """
        pieces: list[str] = []
        emitted = ""
        for i in range(len(tokens)):
            text = self.decode(tokens[: i + 1])
            if text.endswith("\ufffd") and i + 1 < len(tokens):
                pieces.append("")
                continue
            pieces.append(text[len(emitted):])
            emitted = text
        return pieces


class CodecRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._codecs: dict[str, TextCodec] = {}

    def for_model(self, config: TuftConfig, base_model: str) -> TextCodec:
        with self._lock:
            codec = self._codecs.get(base_model)
            if codec is None:
                spec = next(m for m in config.models if m.model_name == base_model)
                # transformers imports torch: loaded here, on first use, so that
                # importing the views (manage.py, the URL map) stays light.
                from transformers import AutoTokenizer

                logger.info("loading tokenizer of %s from %s", base_model, spec.model_path)
                codec = TextCodec(AutoTokenizer.from_pretrained(spec.model_path))
                self._codecs[base_model] = codec
            return codec


codecs = CodecRegistry()
