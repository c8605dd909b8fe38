"""Build a tiny Qwen3-architecture causal LM with a locally trained tokenizer.

There is no model hub on our machines, so tests, benchmarks and the default
run use a model made here: random weights, a byte-level BPE tokenizer trained
on generated text, both saved with ``save_pretrained`` so they load through
``AutoModelForCausalLM`` / ``AutoTokenizer`` exactly like any hub checkpoint.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_WORDS = (
    "the a an model train tune token loss step rank adapter tenant sample learn weight "
    "data batch grad layer head query key value light river stone cloud green blue red "
    "seven eight nine one two three four five six ten hundred run walk read write say "
    "is are was were be have has do does go went come came see saw make made good bad "
    "new old big small fast slow hot cold day night year time way man woman child world"
).split()


@dataclass(frozen=True)
class TinyModelSize:
    """Shape of the built model. The defaults give ~165k parameters."""

    vocab_size: int = 1024
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    # NOTE: 64, not hidden_size // num_heads: vLLM's CPU attention kernel only
    # accepts head sizes 32, 64, 80, ...; 64 is the one measured to work.
    head_dim: int = 64
    intermediate_size: int = 128
    max_position_embeddings: int = 2048


SIZES = {
    "tiny": TinyModelSize(),
    # ~10M parameters: the benchmark size (hidden 256, 4 layers, 8k vocab).
    "small": TinyModelSize(
        vocab_size=8192, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
        intermediate_size=768,
    ),
}


def _corpus(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 9999)))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ","]))
    # A little non-ASCII so byte-level BPE sees multi-byte sequences.
    lines += ["Grüße, café, naïve, 東京, ¿qué?", "emoji 🙂 and ünïcödé"]
    return lines


def build_tiny_model(out_dir: str | Path, size: TinyModelSize = TinyModelSize(), seed: int = 0) -> Path:
    """Write a tokenizer and a randomly initialised Qwen3 model to ``out_dir``.

    Deterministic for a given ``size`` and ``seed``. Returns the directory.
    """
    from engine import cpu_tuning  # imports torch: only when a model is built

    # One thread: on `tuft`'s first start this runs on the server's main thread, which
    # must not keep an OpenMP pool beside the training lane's (engine/cpu_tuning.py).
    with cpu_tuning.one_thread():
        return _build(Path(out_dir), size, seed)


def _build(out: Path, size: TinyModelSize, seed: int) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    out.mkdir(parents=True, exist_ok=True)

    special = ["<|endoftext|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size.vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(4000, seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=size.vocab_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        head_dim=size.head_dim,
        max_position_embeddings=size.max_position_embeddings,
        tie_word_embeddings=True,
        # NOTE: with the default 0.02 the logits of a random model are tiny and a
        # LoRA cannot move them far enough to learn anything (loss floors near
        # ln(vocab)); 0.2 gives a model whose adapters really learn.
        initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    logger.info("built tiny model at %s (%d parameters)", out, sum(p.numel() for p in model.parameters()))
    return out
