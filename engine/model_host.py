"""One base model in memory, shared by every adapter that runs on it.

A ``ModelHost`` loads a Hugging Face causal LM and its tokenizer once and
wraps it in a single peft ``PeftModel`` that holds many named LoRA adapters:
one per training run, plus the sampler checkpoints currently cached. Every
forward pass picks its adapter explicitly under ``self.lock``, so one run's
step never sees another run's weights ("no switching the active adapter while
someone else is mid-backward").
"""

from __future__ import annotations

import logging
import threading
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from engine.types import BaseModelSpec, EngineError, LoraSpec, UserInputError

logger = logging.getLogger(__name__)

ATTN_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_MODULES = ["gate_proj", "up_proj", "down_proj"]
UNEMBED_MODULES = ["lm_head"]

# peft warns when lm_head (tied to the embedding) is a LoRA target. We never
# merge adapters into the base weights, so the tie cannot be broken; say so once.
warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*")

# peft's name for "no adapter on this row" in a mixed-adapter batch.
BASE_ROW = "__base__"


def lora_config_for(spec: LoraSpec) -> LoraConfig:
    """The one place a ``LoraSpec`` becomes a peft config (training, saving, sampling)."""
    targets: list[str] = []
    if spec.train_attn:
        targets += ATTN_MODULES
    if spec.train_mlp:
        targets += MLP_MODULES
    if spec.train_unembed:
        targets += UNEMBED_MODULES
    if not targets:
        raise UserInputError("LoRA config trains nothing: enable train_attn, train_mlp or train_unembed")
    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.0, target_modules=targets, bias="none")


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class ModelHost:
    """A loaded base model plus the LoRA adapters attached to it."""

    def __init__(self, spec: BaseModelSpec, device: torch.device | None = None) -> None:
        self.spec = spec
        self.device = device or pick_device()
        self.lock = threading.RLock()
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
        # NOTE: bf16 on GPU (memory and speed), fp32 on CPU (bf16 matmuls are slow
        # there and fp32 keeps trainer/sampler logprobs equal to ~1e-6).
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(spec.model_path, dtype=dtype)
        model.to(self.device)
        model.eval()  # no dropout anywhere; LoRA dropout is 0 too
        for p in model.parameters():
            p.requires_grad_(False)
        self.base: PreTrainedModel = model
        self.peft: PeftModel | None = None
        self._adapter_layers: tuple[torch.nn.Module, ...] | None = None  # see adapter_layers()
        self.vocab_size: int = int(model.config.vocab_size)
        self.eos_token_id: int | None = self.tokenizer.eos_token_id
        logger.info("loaded base model %s from %s on %s", spec.model_name, spec.model_path, self.device)

    # -- adapters ---------------------------------------------------------

    def add_adapter(self, name: str, spec: LoraSpec) -> None:
        """Attach a fresh LoRA adapter (B = 0, so it starts as the base model)."""
        if spec.rank < 1 or spec.rank > self.spec.max_lora_rank:
            raise UserInputError(
                f"LoRA rank {spec.rank} is out of range for {self.spec.model_name} "
                f"(1..{self.spec.max_lora_rank})"
            )
        config = lora_config_for(spec)
        with self.lock, torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if spec.seed is not None:
                torch.manual_seed(spec.seed)
            if self.peft is None:
                self.peft = get_peft_model(self.base, config, adapter_name=name)
            else:
                self.peft.add_adapter(name, config)
                if self.peft.active_adapter not in self.peft.peft_config:  # a deleted one (remove_adapter)
                    self.peft.set_adapter(name)
            self._adapter_layers = None
        # peft creates adapter weights in the base dtype; train them in fp32.
        for p in self.adapter_parameters(name).values():
            p.data = p.data.float()

    def load_adapter(self, directory: Path, name: str) -> None:
        """Attach the PEFT checkpoint in ``directory`` as adapter ``name`` (not trainable)."""
        with self.lock:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, str(directory), adapter_name=name)
            else:
                self.peft.load_adapter(str(directory), adapter_name=name)
                if self.peft.active_adapter not in self.peft.peft_config:  # a deleted one
                    self.peft.set_adapter(name)
            self._adapter_layers = None

    def has_adapter(self, name: str) -> bool:
        return self.peft is not None and name in self.peft.peft_config

    def adapter_parameters(self, name: str) -> dict[str, torch.nn.Parameter]:
        """The adapter's parameters by (adapter-independent) name, in a stable order."""
        assert self.peft is not None
        marker = f".{name}."
        params = {
            n.replace(marker, "."): p for n, p in self.peft.named_parameters() if marker in n
        }
        return dict(sorted(params.items()))

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            if self.has_adapter(name):
                assert self.peft is not None
                self.peft.delete_adapter(name)
                self._adapter_layers = None
                # NOTE(peft): peft keeps a deleted adapter as the active one when it was
                # the last, and PeftModel.forward then fails with KeyError. Unwrapping the
                # model instead (unload()) changed the base model's logits here (tied
                # lm_head), so the wrapper stays; see use() and add_adapter().

    @contextmanager
    def use(self, adapter: str | None) -> Iterator[torch.nn.Module]:
        """Hold the model lock with ``adapter`` active (None = the plain base model)."""
        with self.lock:
            if adapter is None:
                if self.peft is None or not self.peft.peft_config:
                    # No adapter left: the LoRA layers peft injected skip adapters they
                    # don't hold, so the wrapped model is the plain base model.
                    yield self.base
                else:
                    with self.peft.disable_adapter():
                        yield self.peft
                return
            assert self.peft is not None and adapter in self.peft.peft_config, adapter
            self.peft.set_adapter(adapter)
            # set_adapter flips requires_grad on; the base stays frozen regardless.
            yield self.peft

    def adapter_layers(self) -> tuple[torch.nn.Module, ...]:
        """The layers that apply adapters (peft's LoRA layers and auxiliary wrappers), found once per change.

        NOTE(batch): finding them walks every module of the model, and every
        adapter adds modules of its own (A, B and dropout in each layer): with 64
        runs on the built-in small model a walk took ~12 ms, on a 36-layer model
        about nine times that. peft walks the model twice in every forward that
        mixes adapters by row, so this list is kept instead, and rebuilt only
        when an adapter is added or removed.
        """
        with self.lock:
            if self._adapter_layers is None:
                self._adapter_layers = () if self.peft is None else tuple(
                    m for m in self.peft.modules() if isinstance(m, (LoraLayer, AuxiliaryTrainingWrapper)))
            return self._adapter_layers

    @contextmanager
    def rows_through(self, adapter_names: list[str]) -> Iterator[torch.nn.Module]:
        """Row k of a forward through the yielded model uses adapter ``adapter_names[k]`` (``BASE_ROW``: none).

        peft's mixed-adapter batch: each adapter layer gets the names as its
        ``adapter_names`` argument, which is what ``PeftModel.forward(...,
        adapter_names=)`` does, but without its two walks over every module
        (``adapter_layers``). Yields the transformers model inside the peft
        wrapper (the plain base model while no adapter is loaded): call that,
        not the ``PeftModel``. Hold ``lock`` throughout.
        """
        loaded = set(self.peft.peft_config) if self.peft is not None else set()
        unknown = sorted({n for n in adapter_names if n != BASE_ROW} - loaded)
        if unknown:
            raise EngineError(f"adapter {unknown[0]!r} is not loaded on {self.spec.model_name}")
        if not loaded:  # no adapter loaded (never, or all removed): every row is the plain base model
            yield self.base
            return
        handles = []
        try:
            for layer in self.adapter_layers():
                handles.append(layer.register_forward_pre_hook(
                    partial(_with_adapter_names, adapter_names=adapter_names), with_kwargs=True))
            yield self.peft.get_base_model()
        finally:
            for handle in handles:
                handle.remove()

    # -- validation -------------------------------------------------------

    def check_tokens(self, tokens: list[int], what: str) -> None:
        if not tokens:
            raise UserInputError(f"{what} is empty")
        bad = [t for t in tokens if not 0 <= t < self.vocab_size]
        if bad:
            raise UserInputError(
                f"{what} has token id {bad[0]} outside the vocabulary of "
                f"{self.spec.model_name} (0..{self.vocab_size - 1})"
            )
        if len(tokens) > self.spec.max_model_len:
            raise UserInputError(
                f"{what} has {len(tokens)} tokens, more than max_model_len "
                f"{self.spec.max_model_len} of {self.spec.model_name}"
            )


def _with_adapter_names(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                        adapter_names: list[str]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Forward pre-hook: call the layer with per-row ``adapter_names`` (see ``ModelHost.rows_through``)."""
    return args, {**kwargs, "adapter_names": adapter_names}
