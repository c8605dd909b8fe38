"""The narrow interface the server's workers use: one ``Engine`` per process.

It owns the loaded base models (each loaded once, on first use, and shared by
every tenant's adapters), the training runs and the samplers (one per base
model, HF or vLLM, chosen by models.yaml's ``sampler``; see ``engine.sampler``).
Workers call it with ``engine.types`` values only.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from engine import cpu_tuning
from engine.batching import DEFAULT_MAX_BATCH_TOKENS
from engine.model_host import ModelHost
from engine.sampler import Sampler, resolve_sampler_kind
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
    def __init__(self, models: list[BaseModelSpec], max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 on_loaded: Callable[[str], None] | None = None) -> None:
        """``max_batch_tokens``: padded tokens (rows x longest row) of one batched
        training pass in ``forward_backward_many`` (default 8192, see batching.py).
        ``on_loaded(what)``: called after each base model or sampler is loaded, and
        whenever the runs created have grown by a quarter (from 16 on): then many
        objects that live long were just made (the server freezes the garbage
        collector's long-lived objects, tuft_project.gc_freeze)."""
        self.specs = {m.model_name: m for m in models}
        # Training reuses large blocks every step; see engine/cpu_tuning.py.
        cpu_tuning.keep_freed_memory()
        self._on_loaded = on_loaded or (lambda what: None)
        # An adapter is ~45 modules, ~1,000 objects for the collector to walk on each
        # full pass until frozen; a geometric schedule keeps the reports (each a full
        # collection and a freeze in the server) few: 20 by 1,000 runs.
        self._runs_created = 0
        self._next_runs_report = 16
        self._hosts: dict[str, ModelHost] = {}
        self._samplers: dict[str, Sampler] = {}
        self._load_lock = threading.Lock()
        # Separate from _load_lock: starting a vLLM engine takes minutes and must
        # not hold up training on an already loaded host.
        self._sampler_lock = threading.Lock()
        self.training = TrainingEngine(self._hosts, max_batch_tokens)

    def host(self, model_name: str) -> ModelHost:
        """The loaded base model, loading it on first use."""
        cpu_tuning.for_other_work()  # no-op on a thread that trains (its pool serves the load too)
        with self._load_lock:
            if model_name not in self._hosts:
                if model_name not in self.specs:
                    raise UserInputError(
                        f"unknown base model {model_name!r}; supported: {', '.join(sorted(self.specs))}"
                    )
                self._hosts[model_name] = ModelHost(self.specs[model_name])
                self._on_loaded(f"loading base model {model_name}")
                if self.specs[model_name].sampler != "hf":
                    # A vLLM engine takes minutes to start: begin now, beside training,
                    # rather than on the first sample.
                    threading.Thread(target=self._start_sampler, args=(model_name,), daemon=True,
                                     name=f"start-sampler-{model_name}").start()
            return self._hosts[model_name]

    def _start_sampler(self, model_name: str) -> None:
        try:
            self.sampler(model_name)
        except EngineError as exc:  # the first sample reports it (and tries again)
            logger.warning("sampler of %s did not start: %s", model_name, exc)

    def sampler(self, model_name: str) -> Sampler:
        """The model's sampler, created on first use (a vLLM engine starts here)."""
        host = self.host(model_name)
        with self._sampler_lock:
            if model_name not in self._samplers:
                kind = resolve_sampler_kind(host.spec, on_gpu=host.device.type == "cuda")
                if kind == "vllm":
                    try:
                        # Imported here: vLLM takes ~30 s to import and is an optional install.
                        from engine.vllm_sampling import VLLMSampler

                        self._samplers[model_name] = VLLMSampler(host)
                    except Exception as exc:  # whatever vLLM raised: a server fault, reported per request
                        logger.exception("could not start the vLLM engine of %s", model_name)
                        raise EngineError(f"could not start the vLLM engine of {model_name}: {exc}") from exc
                else:
                    self._samplers[model_name] = HFSampler(host)
                logger.info("model %s samples with the %s back end", model_name, kind)
                self._on_loaded(f"starting the {kind} sampler of {model_name}")
            return self._samplers[model_name]

    def close(self) -> None:
        """Stop the samplers' background engines (vLLM); safe to call twice."""
        with self._sampler_lock:
            for sampler in self._samplers.values():
                sampler.close()
            self._samplers.clear()

    # Training -------------------------------------------------------------

    def create_run(self, run_id: str, model_name: str, lora: LoraSpec) -> None:
        cpu_tuning.for_training()
        self.host(model_name)
        created = not self.training.has_run(run_id)
        self.training.create_run(run_id, model_name, lora)
        if created:
            self._run_created()

    def _run_created(self) -> None:
        with self._load_lock:
            self._runs_created += 1
            due = self._runs_created >= self._next_runs_report
            if due:
                self._next_runs_report = self._runs_created + self._runs_created // 4
        if due:
            self._on_loaded(f"creating {self._runs_created} training runs")

    def has_run(self, run_id: str) -> bool:
        return self.training.has_run(run_id)

    def release_run(self, run_id: str) -> None:
        self.training.release_run(run_id)

    def forward_backward(self, specs: list[ForwardBackwardSpec]) -> list[ForwardBackwardResult]:
        cpu_tuning.for_training()
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
        cpu_tuning.for_training()
        return self.training.forward_backward_many(specs)

    def optim_step(self, run_id: str, adam: AdamSpec) -> dict[str, float]:
        cpu_tuning.for_training()
        return self.training.optim_step(run_id, adam)

    def optim_step_many(self, steps: list[tuple[str, AdamSpec]]) -> list[dict[str, float] | EngineError]:
        """The scheduler's entry point for optim_steps of several runs: one outcome each, in order.

        Runs stepped with equal hyperparameters share one multi-tensor AdamW
        update; each keeps its own optimizer state. A step that fails yields its
        ``EngineError`` and never fails the others.
        """
        cpu_tuning.for_training()
        return self.training.optim_step_many(steps)

    def save(self, run_id: str, directory: Path, with_optimizer: bool, overwrite: bool = False) -> int:
        cpu_tuning.for_training()
        return self.training.save(run_id, directory, with_optimizer, overwrite)

    def load(self, run_id: str, model_name: str, directory: Path, with_optimizer: bool) -> LoraSpec:
        cpu_tuning.for_training()
        self.host(model_name)
        created = not self.training.has_run(run_id)
        lora = self.training.load(run_id, model_name, directory, with_optimizer)
        if created:
            self._run_created()
        return lora

    # Sampling -------------------------------------------------------------

    def sample_many(self, requests: list[SampleRequest]) -> list[SampleResult | EngineError]:
        """The scheduler's entry point for sampling: one outcome per request, in order.

        Requests of one base model are served together (one HF batch across
        adapters, or all submitted to vLLM at once). A request that fails yields
        its ``EngineError`` and never fails the others.
        """
        cpu_tuning.for_other_work()
        outcomes: list[SampleResult | EngineError | None] = [None] * len(requests)
        by_model: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            by_model.setdefault(req.model_name, []).append(i)
        for model_name, slots in by_model.items():
            try:
                results = self.sampler(model_name).sample_many([requests[i] for i in slots])
            except EngineError as exc:
                results = [exc] * len(slots)
            for i, result in zip(slots, results):
                outcomes[i] = result
        return [o if o is not None else EngineError("request was not served") for o in outcomes]

    def sample(self, model_name: str, adapter_dir: Path | None, spec: SampleSpec) -> SampleResult:
        """One request on its own (raises its ``EngineError``)."""
        directory = str(adapter_dir) if adapter_dir is not None else None
        outcome = self.sample_many([SampleRequest(model_name, directory, spec)])[0]
        if isinstance(outcome, EngineError):
            raise outcome
        return outcome
