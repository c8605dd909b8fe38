"""Random-weight models with the shapes of real Qwen3 checkpoints (no download), for the GPU benchmarks.

Used by gpu_batching.py and gpu_sampling.py. The tokenizer is the built-in tiny
model's (engine/tiny_model.py): token ids are all the benchmarks need.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}
VOCAB = 151936


def build_model(shape: str, out: Path) -> Path:
    """A model directory under ``out``: a Qwen3 shape (bf16, built on the GPU when there is one)
    or, for ``shape="tiny"``, the built-in tiny model itself."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from engine.tiny_model import SIZES, build_tiny_model

    tokenizer_dir = build_tiny_model(out / "tiny", SIZES["tiny"])
    if shape == "tiny":
        return tokenizer_dir
    config = Qwen3Config(vocab_size=VOCAB, max_position_embeddings=4096, rope_theta=1e6,
                         eos_token_id=0, pad_token_id=1, bos_token_id=0, **SHAPES[shape])
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model_dir = out / shape
    model.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(model_dir)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return model_dir
