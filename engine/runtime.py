"""The narrow interface the server's workers use: one ``Engine`` per process.

It owns the loaded base models (each loaded once, on first use, and shared by
every tenant's adapters), the training runs and the samplers. Workers call it
with ``engine.types`` values only.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from engine.batching import DEFAULT_MAX_BATCH_TOKENS
from engine.model_host import ModelHost
from engine.sampling import HFSampler
from engine.training import TrainingEngine
from engine.types import (
    AdamSpec,
    BaseModelSpec,
    EngineError,
    ForwardBackwardResult,
    ForwardBackwardSpec,
    LoraSpec,
    SampleRequest,
    SampleResult,
    SampleSpec,
    UserInputError,
)

logger = logging.getLogger(__name__)


class Engine:
    def __init__(self, models: list[BaseModelSpec], max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS) -> None:
        """``max_batch_tokens``: padded tokens (rows x longest row) of one batched
        training pass in ``forward_backward_many`` (default 8192, see batching.py)."""
        self.specs = {m.model_name: m for m in models}
        self._hosts: dict[str, ModelHost] = {}
        self._samplers: dict[str, HFSampler] = {}
        self._load_lock = threading.Lock()
        self.training = TrainingEngine(self._hosts, max_batch_tokens)

    def host(self, model_name: str) -> ModelHost:
        """The loaded base model, loading it on first use."""
        with self._load_lock:
            if model_name not in self._hosts:
                if model_name not in self.specs:
                    raise UserInputError(
                        f"unknown base model {model_name!r}; supported: {', '.join(sorted(self.specs))}"
                    )
                self._hosts[model_name] = ModelHost(self.specs[model_name])
                self._samplers[model_name] = HFSampler(self._hosts[model_name])
            return self._hosts[model_name]

    # Training -------------------------------------------------------------

    def create_run(self, run_id: str, model_name: str, lora: LoraSpec) -> None:
        self.host(model_name)
        self.training.create_run(run_id, model_name, lora)

    def has_run(self, run_id: str) -> bool:
        return self.training.has_run(run_id)

    def release_run(self, run_id: str) -> None:
        self.training.release_run(run_id)

    def forward_backward(self, specs: list[ForwardBackwardSpec]) -> list[ForwardBackwardResult]:
        return self.training.forward_backward(specs)

    def forward_backward_many(self, specs: list[ForwardBackwardSpec]) -> list[ForwardBackwardResult | EngineError]:
        """The scheduler's entry point: requests of possibly several runs, one outcome each.

        A request that fails (bad input, unknown run) yields its ``EngineError`` in
        its slot and never fails the others. The requests of one base model run as
        one forward and backward pass over all their rows (split into several
        passes, in order, above ``max_batch_tokens``), each row through its own
        run's adapter; results and gradients equal those of sending the requests
        one by one (gradients of one run's requests accumulate).
        """
        return self.training.forward_backward_many(specs)

    def optim_step(self, run_id: str, adam: AdamSpec) -> dict[str, float]:
        return self.training.optim_step(run_id, adam)

    def save(self, run_id: str, directory: Path, with_optimizer: bool, overwrite: bool = False) -> int:
        return self.training.save(run_id, directory, with_optimizer, overwrite)

    def load(self, run_id: str, model_name: str, directory: Path, with_optimizer: bool) -> LoraSpec:
        self.host(model_name)
        return self.training.load(run_id, model_name, directory, with_optimizer)

    # Sampling -------------------------------------------------------------

    def sample_many(self, requests: list[SampleRequest]) -> list[SampleResult | EngineError]:
        """The scheduler's entry point for sampling: one outcome per request, in order.

        A request that fails yields its ``EngineError`` and never fails the others.
        """
        outcomes: list[SampleResult | EngineError] = []
        for req in requests:
            try:
                adapter = Path(req.adapter_dir) if req.adapter_dir is not None else None
                outcomes.append(self.sample(req.model_name, adapter, req.spec))
            except EngineError as exc:
                outcomes.append(exc)
        return outcomes

    def sample(self, model_name: str, adapter_dir: Path | None, spec: SampleSpec) -> SampleResult:
        self.host(model_name)
        return self._samplers[model_name].sample(adapter_dir, spec)
