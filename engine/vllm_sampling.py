"""The vLLM sampling back end: one engine per base model per process, multi-LoRA.

A driver thread owns the ``vllm.LLMEngine`` (it is not thread-safe): callers
put requests into an inbox and wait on futures; the driver adds every waiting
request before each engine step, so requests of all tenants and threads decode
together (continuous batching), never one ``generate`` at a time.

Adapters: every sampler checkpoint *version* (path + file mtime + size) gets
its own integer LoRA id, so a re-saved checkpoint is never served from a stale
cache. The driver loads an adapter with ``add_lora`` before the first request
that uses it: a broken adapter fails that request (category user) instead of
failing inside a model step, which would kill the engine for everyone. The
driver keeps at most ``max_cpu_loras`` adapters loaded and removes the least
recently used itself, so vLLM never has to reload one from disk mid-step.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from engine import checkpoints
from engine.model_host import ModelHost
from engine.process_reaper import Reaper
from engine.sample_checks import check_sample_for_model, stop_sequences
from engine.sampling import HFSampler
from engine.types import EngineError, SampleRequest, SampleResult, UserInputError
from engine.vllm_requests import engine_kwargs, needs_hf, sampling_kwargs, scores_prompt, to_result

# NOTE: KV cache size on CPU in GiB; vLLM's default (4) is more than small
# machines can spare next to the trainer. An operator's own setting wins.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import psutil  # noqa: E402  (a vLLM dependency)
from vllm import EngineArgs, LLMEngine, SamplingParams, TokensPrompt  # noqa: E402
from vllm.exceptions import VLLMClientError  # noqa: E402
from vllm.lora.request import LoRARequest  # noqa: E402
from vllm.sampling_params import RequestOutputKind  # noqa: E402

logger = logging.getLogger(__name__)

# A sample that has not finished in this long is aborted and fails (server fault):
# a wedged engine must not hang its callers forever.
REQUEST_TIMEOUT_S = 900.0


@dataclass
class _Submission:
    """One request on its way to the driver thread."""

    request_id: str
    prompt: list[int]
    params: Any  # vllm.SamplingParams
    adapter_dir: Path | None
    scores_prompt: bool = False  # asks for prompt logprobs
    lm_head: bool = False  # its adapter has an lm_head LoRA
    future: Future = field(default_factory=Future)


class _ServeOnHF(Exception):
    """Set on a submission's future by the driver: the HF decoder must serve it (see ``_admit``)."""


def targets_lm_head(directory: Path) -> bool:
    """Whether the PEFT adapter in ``directory`` has an ``lm_head`` LoRA (True when unsure)."""
    try:
        targets = json.loads((directory / checkpoints.ADAPTER_CONFIG).read_text()).get("target_modules") or []
    except (OSError, ValueError):
        return True
    if isinstance(targets, str):  # a regular expression over module names
        return "lm_head" in targets
    return any(str(t).split(".")[-1] == "lm_head" for t in targets)


class _AdapterIds:
    """Stable LoRA ids per adapter version, and the LRU of those loaded (driver thread only)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, int] = {}
        self._next = itertools.count(1)
        self.loaded: OrderedDict[int, None] = OrderedDict()

    def request_for(self, directory: Path) -> LoRARequest:
        weights = directory / checkpoints.ADAPTER_WEIGHTS
        if not weights.exists():
            raise UserInputError(f"no adapter weights in checkpoint {directory.name!r}")
        stat = weights.stat()
        key = f"{directory.resolve()}:{stat.st_mtime_ns}:{stat.st_size}"
        if key not in self._ids:
            self._ids[key] = next(self._next)
        lora_id = self._ids[key]
        return LoRARequest(lora_name=f"adapter-{lora_id}", lora_int_id=lora_id, lora_path=str(directory))


class VLLMSampler:
    """Serves ``sample_many`` from a vLLM engine driven by a background thread."""

    kind = "vllm"

    def __init__(self, host: ModelHost) -> None:
        self.host = host
        on_gpu = host.device.type == "cuda"
        # Serves what vLLM cannot serve (correctly) with the trainer's own copy of the
        # model: ``needs_hf``, and prompt logprobs next to an lm_head adapter (``_admit``).
        self.fallback = HFSampler(host)
        self._fallback_reasons: set[str] = set()
        # Submissions waiting until no request in the engine scores its prompt (driver only).
        self._deferred: list[_Submission] = []
        self._adapters = _AdapterIds(host.spec.max_cpu_loras)
        self._inbox: queue.Queue[_Submission | None] = queue.Queue()
        self._pending: dict[str, _Submission] = {}
        self._dead: str | None = None
        self._closed = False
        started = time.monotonic()
        # The engine's processes die with this one, even if it dies during the start-up.
        self._reaper = Reaper()
        before = {c.pid for c in psutil.Process().children(recursive=True)} | {self._reaper.pid}
        starting = threading.Event()
        starting.set()
        poller = self._reaper.guard_while(
            starting.is_set, lambda: [c.pid for c in psutil.Process().children(recursive=True) if c.pid not in before])
        try:
            self._engine = LLMEngine.from_engine_args(EngineArgs(**engine_kwargs(host.spec, on_gpu)))
        finally:
            starting.clear()
            poller.join()
        self.startup_s = time.monotonic() - started
        atexit.register(self.close)
        logger.info("vLLM engine for %s ready in %.1f s (processes %s)", host.spec.model_name, self.startup_s,
                    self._reaper.guarded)
        self._thread = threading.Thread(target=self._drive, name=f"vllm-{host.spec.model_name}", daemon=True)
        self._thread.start()

    # -- callers ----------------------------------------------------------

    def sample_many(self, requests: Sequence[SampleRequest]) -> list[SampleResult | EngineError]:
        outcomes: list[SampleResult | EngineError | None] = [None] * len(requests)
        submitted: list[tuple[int, _Submission, list[list[int]]]] = []
        on_hf: list[int] = []
        for slot, req in enumerate(requests):
            try:
                if self._dead is not None:
                    raise EngineError(f"the vLLM engine of {self.host.spec.model_name} stopped: {self._dead}")
                max_tokens = check_sample_for_model(req.spec, self.host.vocab_size, self.host.spec.max_model_len)
                adapter = Path(req.adapter_dir) if req.adapter_dir else None
                lm_head = adapter is not None and targets_lm_head(adapter)
                reason = needs_hf(req.spec)
                if reason is None and scores_prompt(req.spec) and lm_head:
                    reason = "prompt logprobs with an lm_head adapter"
                if reason is not None:
                    self._note_fallback(reason)
                    on_hf.append(slot)
                    continue
                stops = stop_sequences(req.spec, self.host.eos_token_id)
                params = SamplingParams(**sampling_kwargs(req.spec, max_tokens, stops),
                                        output_kind=RequestOutputKind.FINAL_ONLY)
                sub = _Submission(f"tuft-{uuid.uuid4().hex}", list(req.spec.prompt), params, adapter,
                                  scores_prompt=scores_prompt(req.spec), lm_head=lm_head)
                self._inbox.put(sub)
                submitted.append((slot, sub, stops))
            except EngineError as exc:
                outcomes[slot] = exc
            except (ValueError, VLLMClientError) as exc:  # SamplingParams refused a value we let through
                outcomes[slot] = UserInputError(f"vLLM refused the request: {exc}")
        if on_hf:
            for slot, outcome in zip(on_hf, self.fallback.sample_many([requests[i] for i in on_hf])):
                outcomes[slot] = outcome
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        rerouted: list[int] = []
        for slot, sub, stops in submitted:
            try:
                output = sub.future.result(timeout=max(0.0, deadline - time.monotonic()))
                outcomes[slot] = to_result(output, requests[slot].spec, stops)
            except FutureTimeout:
                self._inbox.put(_Submission(sub.request_id, [], None, None))  # asks the driver to abort it
                outcomes[slot] = EngineError(f"sample did not finish in {REQUEST_TIMEOUT_S:.0f} s")
            except _ServeOnHF as exc:
                self._note_fallback(str(exc))
                rerouted.append(slot)
            except EngineError as exc:
                outcomes[slot] = exc
        if rerouted:
            for slot, outcome in zip(rerouted, self.fallback.sample_many([requests[i] for i in rerouted])):
                outcomes[slot] = outcome
        return [o if o is not None else EngineError("request was not served") for o in outcomes]

    def _note_fallback(self, reason: str) -> None:
        """Log once per reason (per engine) that such requests are decoded by the HF back end."""
        if reason not in self._fallback_reasons:
            self._fallback_reasons.add(reason)
            logger.info("%s: requests with %s are served by the HF decoder, not vLLM (docs/api.md)",
                        self.host.spec.model_name, reason)

    def close(self) -> None:
        """Stop the driver and the engine's processes; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join(timeout=30)
        try:
            self._engine.engine_core.shutdown()
        except Exception:  # already gone; nothing left to free
            logger.debug("vLLM engine shutdown", exc_info=True)
        self._reaper.release()  # stopped in order: the reaper leaves without killing

    # -- driver thread ----------------------------------------------------

    def _drive(self) -> None:
        engine = self._engine
        try:
            while True:
                if self._deferred and not self._scoring_prompts():
                    deferred, self._deferred = self._deferred, []
                    for sub in deferred:
                        self._admit(sub)
                busy = engine.has_unfinished_requests()
                try:  # idle: sleep until a request comes; busy: just look
                    first = self._inbox.get(block=not busy)
                except queue.Empty:
                    first = _NOTHING
                batch = [first] if first is not _NOTHING else []
                while True:  # everything else waiting joins this step
                    try:
                        batch.append(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                if any(sub is None for sub in batch):
                    return
                for sub in batch:
                    assert isinstance(sub, _Submission)
                    self._admit(sub)
                if engine.has_unfinished_requests():
                    for output in engine.step():
                        sub = self._pending.pop(output.request_id, None) if output.finished else None
                        if sub is not None:
                            sub.future.set_result(output)
        except Exception as exc:  # the engine died: fail everyone waiting, refuse new work
            logger.exception("vLLM engine of %s failed", self.host.spec.model_name)
            self._dead = f"{type(exc).__name__}: {exc}"
            failure = EngineError(f"the vLLM engine of {self.host.spec.model_name} stopped: {self._dead}")
            for sub in [*self._pending.values(), *self._deferred]:
                sub.future.set_exception(failure)
            self._pending.clear()
            self._deferred.clear()
            while not self._inbox.empty():
                sub = self._inbox.get_nowait()
                if sub is not None and sub.params is not None:
                    sub.future.set_exception(failure)

    def _admit(self, sub: _Submission) -> None:
        """Hand one submission to the engine (driver thread); its own faults fail only it."""
        engine = self._engine
        if sub.params is None:  # an abort of a request whose caller gave up
            if self._pending.pop(sub.request_id, None) is not None:
                engine.abort_request([sub.request_id])
            self._deferred = [d for d in self._deferred if d.request_id != sub.request_id]
            return
        # NOTE: vLLM 0.32 computes prompt logprobs through the lm_head LoRA with the
        # per-request LoRA indices of the step (LogitsProcessorWithLoRA + punica's
        # sampler_indices), so a prompt row can pick up another request's lm_head delta
        # (up to 0.97 nats off). Adapters without lm_head have an all-zero lm_head slot:
        # a prompt-scoring request therefore never shares the engine with a request whose
        # adapter has one. It goes to the HF decoder if such a request is in the engine
        # (or waiting); such a request waits while one scoring its prompt is in the engine.
        if sub.scores_prompt and (any(p.lm_head for p in self._pending.values())
                                  or any(d.lm_head for d in self._deferred)):
            sub.future.set_exception(_ServeOnHF("prompt logprobs while an lm_head adapter is decoding"))
            return
        if sub.lm_head and self._scoring_prompts():
            self._deferred.append(sub)
            return
        try:
            lora = self._load_adapter(sub.adapter_dir) if sub.adapter_dir is not None else None
            engine.add_request(sub.request_id, TokensPrompt(prompt_token_ids=sub.prompt), sub.params,
                               lora_request=lora)
        except EngineError as exc:
            sub.future.set_exception(exc)
            return
        except (ValueError, TypeError, VLLMClientError) as exc:  # vLLM's input checks
            sub.future.set_exception(UserInputError(f"vLLM refused the request: {exc}"))
            return
        self._pending[sub.request_id] = sub

    def _scoring_prompts(self) -> bool:
        return any(p.scores_prompt for p in self._pending.values())

    def _load_adapter(self, directory: Path) -> LoRARequest:
        adapters = self._adapters
        lora = adapters.request_for(directory)
        if lora.lora_int_id in adapters.loaded:
            adapters.loaded.move_to_end(lora.lora_int_id)
            return lora
        while len(adapters.loaded) >= adapters.capacity:
            old, _ = adapters.loaded.popitem(last=False)
            self._engine.remove_lora(old)
        try:
            ok = self._engine.add_lora(lora)
        except Exception as exc:  # vLLM reports a bad adapter as whatever its loader raised
            raise UserInputError(f"cannot load checkpoint {directory.name!r} as a vLLM adapter: {exc}") from None
        if not ok:
            raise UserInputError(f"cannot load checkpoint {directory.name!r} as a vLLM adapter")
        adapters.loaded[lora.lora_int_id] = None
        return lora


_NOTHING: Any = object()  # "no new submission": the driver steps the engine anyway
