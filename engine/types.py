"""The data that crosses the boundary between the server and the engine.

Only plain values (str, int, float, bool, lists, dicts, paths) so that a spec
can be stored as JSON in the database or an RQ job and rebuilt in any worker.
Never model instances or tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class EngineError(Exception):
    """Base class for errors raised by the engine.

    ``user`` is True when the caller's input is at fault (the operation fails
    with category ``user`` and the run stays usable); False for faults of the
    server itself.
    """

    user: bool = False


class UserInputError(EngineError):
    """The request cannot be executed as asked (bad tokens, shapes, names...)."""

    user = True


@dataclass(frozen=True)
class BaseModelSpec:
    """One entry of ``supported_models`` in models.yaml."""

    model_name: str
    model_path: str
    max_model_len: int
    tensor_parallel_size: int = 1
    # The largest LoRA rank a run on this model may ask for.
    max_lora_rank: int = 128
    # What get_info reports for the client's AutoTokenizer.from_pretrained: a hub
    # name or a directory on the client's machine, never silently a server path.
    tokenizer_id: str = ""  # "" = the model name
    # Sampling back end: "hf", "vllm", or "auto" (vLLM where installed and supported).
    sampler: str = "hf"
    # vLLM: adapters in one batch, and adapters kept loaded in CPU memory (LRU).
    max_loras: int = 8
    max_cpu_loras: int = 32
    # vLLM on GPU: the share of GPU memory its engine may take (the trainer shares the GPU).
    gpu_memory_utilization: float = 0.5


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    seed: int | None = None
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = True

    @property
    def alpha(self) -> int:
        # NOTE: alpha = 2 * rank everywhere (training, saved adapters, sampling),
        # so the effective scale alpha/rank is 2 whatever rank a run picks.
        return 2 * self.rank


@dataclass(frozen=True)
class Tensor:
    """A dense array as a flat list plus a shape (row-major)."""

    data: list[Any]
    shape: list[int]
    dtype: str  # "int64" | "float32"


@dataclass(frozen=True)
class Datum:
    tokens: list[int]
    loss_fn_inputs: dict[str, Tensor]


@dataclass(frozen=True)
class ForwardBackwardSpec:
    """One forward(_backward) request of one training run."""

    run_id: str
    data: list[Datum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] = field(default_factory=dict)
    forward_only: bool = False


@dataclass(frozen=True)
class ForwardBackwardResult:
    # One dict per datum: output name -> Tensor (e.g. "logprobs", "elementwise_loss").
    outputs: list[dict[str, Tensor]]
    # Keys are "name:reduction", as the SDK's chunk combiner requires.
    metrics: dict[str, float]


@dataclass(frozen=True)
class AdamSpec:
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


@dataclass(frozen=True)
class SampleSpec:
    prompt: list[int]
    num_samples: int = 1
    max_tokens: int | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    seed: int | None = None
    # Stop sequences as token lists; None = stop at EOS; [] = never stop early.
    stop_token_seqs: list[list[int]] | None = None
    stop_strings: list[str] = field(default_factory=list)
    prompt_logprobs: bool = False
    topk_prompt_logprobs: int = 0
    topk_sample_logprobs: int = 0
    # Score only the last N prompt positions (prompt logprobs and top-k rows); None = all.
    prompt_logprobs_last_n: int | None = None
    # [len(prompt) - 1, K] token ids to score at prompt positions 1..P-1; -1 = no request.
    target_prompt_ids: list[list[int]] | None = None
    # Draw this many alternative tokens per prompt position 1..P-1 (at the request's temperature).
    prompt_alt_tokens_k: int = 0


@dataclass(frozen=True)
class SampleRequest:
    """One sampling request as the engine's batch entry point takes it."""

    model_name: str
    adapter_dir: str | None  # a PEFT adapter directory; None = the plain base model
    spec: SampleSpec


@dataclass(frozen=True)
class SampledSequence:
    tokens: list[int]
    logprobs: list[float]
    stop_reason: str  # "stop" | "length"
    # [len(tokens)] rows of (token_id, logprob) pairs, or None if not asked for.
    topk: list[list[tuple[int, float]]] | None = None


@dataclass(frozen=True)
class SampleResult:
    sequences: list[SampledSequence]
    # len(prompt) entries, None at position 0; None if not asked for.
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: list[list[tuple[int, float]] | None] | None = None
    # [len(prompt) - 1, K] logprobs of SampleSpec.target_prompt_ids, 0.0 where the id was -1.
    target_prompt_logprobs: list[list[float]] | None = None
    # [len(prompt) - 1, k] draws and their (untempered) logprobs, for prompt_alt_tokens_k.
    prompt_alt_tokens: list[list[int]] | None = None
    prompt_alt_logprobs: list[list[float]] | None = None
