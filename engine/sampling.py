"""The Hugging Face sampling back end: real autoregressive decoding with LoRA adapters.

Concurrent requests decode together, whatever adapter each one uses: their
prompts are left-padded into one batch, every row names its adapter (peft's
mixed-adapter forward; ``__base__`` for the plain model), one prefill scores
the prompts, then one token per row per step with the KV cache. A request
that finishes leaves the batch at once. Every request owns its RNG, consumed
only by its own rows, so a seeded request gives the same tokens alone or
batched with others.

Reported logprobs are those of the model itself (before temperature, top-k or
top-p), so they equal the trainer's logprobs of the same tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from engine import checkpoints
from engine.model_host import BASE_ROW, ModelHost
from engine.sample_checks import check_sample_for_model, stop_sequences
from engine.types import (
    EngineError,
    SampledSequence,
    SampleRequest,
    SampleResult,
    SampleSpec,
    UserInputError,
)

logger = logging.getLogger(__name__)

# Bounds of one decode batch: rows (samples), prompt tokens prefilled at once.
MAX_BATCH_ROWS = 64
MAX_BATCH_PROMPT_TOKENS = 16384


class SamplerAdapterCache:
    """Sampler checkpoints loaded as named adapters, least recently used evicted."""

    def __init__(self, host: ModelHost, capacity: int = 8) -> None:
        self.host = host
        self.capacity = capacity
        self._loaded: OrderedDict[str, str] = OrderedDict()  # cache key -> adapter name

    def adapter_for(self, directory: Path) -> str:
        """The adapter name of this checkpoint version, loading it if needed.

        Call with ``host.lock`` held for as long as the name is used: a later
        load may evict it.
        """
        weights = directory / checkpoints.ADAPTER_WEIGHTS
        if not weights.exists():
            raise UserInputError(f"no adapter weights in checkpoint {directory.name!r}")
        stat = weights.stat()
        # A re-saved (overwritten) checkpoint has a new mtime and so a new key.
        key = f"{directory.resolve()}:{stat.st_mtime_ns}:{stat.st_size}"
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        name = "sampler_" + hashlib.sha1(key.encode()).hexdigest()[:16]
        host = self.host
        with host.lock:
            try:
                host.load_adapter(directory, name)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                host.remove_adapter(name)
                raise UserInputError(f"cannot load checkpoint {directory.name!r} as an adapter: {exc}") from None
            self._loaded[key] = name
            while len(self._loaded) > self.capacity:
                _, old = self._loaded.popitem(last=False)
                host.remove_adapter(old)
        return name


@dataclass
class _Job:
    """One request inside a decode batch, and what it has produced so far."""

    slot: int  # index in the caller's request list
    spec: SampleSpec
    adapter_dir: Path | None
    max_tokens: int
    stops: list[list[int]]
    generator: torch.Generator
    adapter: str = BASE_ROW
    first_row: int = 0  # its rows are [first_row, first_row + num_samples) of the batch
    prompt_result: SampleResult = field(default_factory=lambda: SampleResult(sequences=[]))
    tokens: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    topk: list[list[list[tuple[int, float]]]] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    stopped: list[bool] = field(default_factory=list)
    steps: int = 0

    @property
    def rows(self) -> slice:
        return slice(self.first_row, self.first_row + self.spec.num_samples)

    @property
    def finished(self) -> bool:
        return all(self.done) or self.steps >= self.max_tokens

    def result(self) -> SampleResult:
        sequences = [
            SampledSequence(
                tokens=self.tokens[i],
                logprobs=self.logprobs[i],
                stop_reason="stop" if self.stopped[i] else "length",
                topk=self.topk[i] if self.spec.topk_sample_logprobs else None,
            )
            for i in range(self.spec.num_samples)
        ]
        return dataclasses.replace(self.prompt_result, sequences=sequences)


class HFSampler:
    """Decode with transformers on the host's device, several requests per batch."""

    kind = "hf"

    def __init__(self, host: ModelHost) -> None:
        self.host = host
        self.adapters = SamplerAdapterCache(host)
        self.pad_token_id = host.tokenizer.pad_token_id or 0
        self._busy = threading.Lock()

    def close(self) -> None:
        """Nothing to stop: the model belongs to the host."""

    def sample(self, adapter_dir: Path | None, spec: SampleSpec) -> SampleResult:
        """One request on its own (raises its ``EngineError``)."""
        directory = str(adapter_dir) if adapter_dir is not None else None
        outcome = self.sample_many([SampleRequest(self.host.spec.model_name, directory, spec)])[0]
        if isinstance(outcome, EngineError):
            raise outcome
        return outcome

    def sample_many(self, requests: Sequence[SampleRequest]) -> list[SampleResult | EngineError]:
        outcomes: list[SampleResult | EngineError | None] = [None] * len(requests)
        jobs: list[_Job] = []
        for slot, req in enumerate(requests):
            try:
                jobs.append(self._job(slot, req))
            except EngineError as exc:
                outcomes[slot] = exc
        for group in self._groups(jobs):
            # One group at a time (the adapter cache must not evict a name a group still
            # uses). The host lock is taken per forward call only (NOTE(sched)): between
            # two decode steps a training step of another lane can run, so a long decode
            # never holds the shared model for its whole length.
            with self._busy:
                ready = []
                with self.host.lock:
                    for job in group:
                        try:
                            if job.adapter_dir is not None:
                                job.adapter = self.adapters.adapter_for(job.adapter_dir)
                            ready.append(job)
                        except EngineError as exc:
                            outcomes[job.slot] = exc
                if ready:
                    self._decode(ready)
                    for job in ready:
                        outcomes[job.slot] = job.result()
        return [o if o is not None else EngineError("request was not decoded") for o in outcomes]

    def _job(self, slot: int, req: SampleRequest) -> _Job:
        host, spec = self.host, req.spec
        max_tokens = check_sample_for_model(spec, host.vocab_size, host.spec.max_model_len)
        generator = torch.Generator(device=host.device)
        generator.manual_seed(spec.seed if spec.seed is not None else int(torch.randint(0, 2**62, ()).item()))
        n = spec.num_samples
        return _Job(
            slot=slot, spec=spec, adapter_dir=Path(req.adapter_dir) if req.adapter_dir else None,
            max_tokens=max_tokens, stops=stop_sequences(spec, host.eos_token_id), generator=generator,
            tokens=[[] for _ in range(n)], logprobs=[[] for _ in range(n)], topk=[[] for _ in range(n)],
            done=[False] * n, stopped=[False] * n,
        )

    def _groups(self, jobs: list[_Job]) -> Iterator[list[_Job]]:
        """Split into batches that fit the row, prompt-token and adapter-cache bounds."""
        group: list[_Job] = []
        rows = width = 0
        adapters: set[Path] = set()
        for job in jobs:
            n = job.spec.num_samples
            wider = max(width, len(job.spec.prompt))
            more = adapters | ({job.adapter_dir} if job.adapter_dir is not None else set())
            if group and (rows + n > MAX_BATCH_ROWS or wider * (len(group) + 1) > MAX_BATCH_PROMPT_TOKENS
                          or len(more) > self.adapters.capacity):
                yield group
                group, rows, wider = [], 0, len(job.spec.prompt)
                more = {job.adapter_dir} if job.adapter_dir is not None else set()
            group.append(job)
            rows, width, adapters = rows + n, wider, more
        if group:
            yield group

    @torch.no_grad()
    def _decode(self, jobs: list[_Job]) -> None:
        """Prefill every job's prompt (left-padded, one row each), then decode all rows."""
        device = self.host.device
        width = max(len(j.spec.prompt) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(jobs), width), dtype=torch.long, device=device)
        for i, job in enumerate(jobs):
            ids[i, width - len(job.spec.prompt):] = torch.tensor(job.spec.prompt, device=device)
            mask[i, width - len(job.spec.prompt):] = 1
        keep_all = any(_scores_prompt(j.spec) for j in jobs)
        with self.host.lock:
            with self.host.rows_through([j.adapter for j in jobs]) as model:
                out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                            use_cache=True, logits_to_keep=0 if keep_all else 1)
        for i, job in enumerate(jobs):
            if _scores_prompt(job.spec):
                p = len(job.spec.prompt)
                prompt = ids[i, width - p:]
                job.prompt_result = _score_prompt(out.logits[i, width - p:-1].float(), prompt[1:], job.spec,
                                                  job.generator)
        # One row per sample from here on: repeat each job's prefill row num_samples times.
        counts = torch.tensor([j.spec.num_samples for j in jobs], device=device)
        index = torch.repeat_interleave(torch.arange(len(jobs), device=device), counts)
        cache = out.past_key_values
        cache.batch_select_indices(index)
        mask = mask[index]
        logits = out.logits[:, -1].float()[index]
        first = 0
        for job in jobs:
            job.first_row, first = first, first + job.spec.num_samples
        live = list(jobs)
        while True:
            next_tokens = self._step(live, logits)
            finished = [j for j in live if j.finished]
            if finished:
                live = [j for j in live if not j.finished]
                if not live:
                    return
                keep = torch.cat([torch.arange(j.first_row, j.first_row + j.spec.num_samples, device=device)
                                  for j in live])
                cache.batch_select_indices(keep)
                mask, next_tokens = mask[keep], next_tokens[keep]
                first = 0
                for job in live:
                    job.first_row, first = first, first + job.spec.num_samples
            positions = mask.sum(-1, keepdim=True)  # the next token's position in each row
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            names = [j.adapter for j in live for _ in range(j.spec.num_samples)]
            with self.host.lock, self.host.rows_through(names) as model:
                out = model(input_ids=next_tokens.unsqueeze(-1), past_key_values=cache, attention_mask=mask,
                            position_ids=positions, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1].float()

    def _step(self, live: list[_Job], logits: torch.Tensor) -> torch.Tensor:
        """Choose every live row's next token from ``logits`` [rows, V] and record it."""
        next_tokens = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
        lp = torch.log_softmax(logits, dim=-1)  # [rows, V]
        for job in live:
            rows = job.rows
            chosen = _choose(logits[rows], job.spec, job.generator)  # [n]
            next_tokens[rows] = chosen
            chosen_lp = lp[rows].gather(-1, chosen.unsqueeze(-1)).squeeze(-1).tolist()
            rows_topk = _topk_rows(lp[rows], job.spec.topk_sample_logprobs) if job.spec.topk_sample_logprobs else None
            for i, tok in enumerate(chosen.tolist()):
                if job.done[i]:
                    continue
                job.tokens[i].append(tok)
                job.logprobs[i].append(chosen_lp[i])
                if rows_topk is not None:
                    job.topk[i].append(rows_topk[i])
                if self._should_stop(job.tokens[i], job.stops, job.spec.stop_strings):
                    job.done[i] = job.stopped[i] = True
            job.steps += 1
        return next_tokens

    def _should_stop(self, tokens: list[int], stop_seqs: list[list[int]], stop_strings: list[str]) -> bool:
        for seq in stop_seqs:
            if seq and tokens[-len(seq):] == seq:
                return True
        if stop_strings:
            # Decode only a tail long enough to contain any stop string.
            tail = self.host.tokenizer.decode(tokens[-32:])
            return any(s and s in tail for s in stop_strings)
        return False


def _scores_prompt(spec: SampleSpec) -> bool:
    return bool(spec.prompt_logprobs or spec.topk_prompt_logprobs or spec.target_prompt_ids is not None
                or spec.prompt_alt_tokens_k)


def _score_prompt(
    logits: torch.Tensor, targets: torch.Tensor, spec: SampleSpec, generator: torch.Generator
) -> SampleResult:
    """Everything a request asks about the prompt itself, from the one prefill.

    ``logits`` [P-1, V] are the model's predictions for prompt positions 1..P-1
    and ``targets`` [P-1] the prompt tokens there. Returns a result with no
    sequences; unscored positions are None (position 0 always, and every
    position before the last ``prompt_logprobs_last_n``).
    """
    if not _scores_prompt(spec):
        return SampleResult(sequences=[])
    lp = torch.log_softmax(logits, dim=-1)  # [P-1, V]
    n = lp.shape[0]
    # Rows before ``first`` are not scored (NaN / None on the wire).
    first = n - spec.prompt_logprobs_last_n if spec.prompt_logprobs_last_n is not None else 0
    result = SampleResult(sequences=[])
    if spec.prompt_logprobs:
        picked = lp[first:].gather(-1, targets[first:].unsqueeze(-1)).squeeze(-1).tolist()
        result = dataclasses.replace(result, prompt_logprobs=[None] * (1 + first) + picked)
    if spec.topk_prompt_logprobs:
        rows: list[list[tuple[int, float]] | None] = [None] * (1 + first)
        rows += _topk_rows(lp[first:], spec.topk_prompt_logprobs)
        result = dataclasses.replace(result, topk_prompt_logprobs=rows)
    if spec.target_prompt_ids is not None:
        ids = torch.tensor(spec.target_prompt_ids, dtype=torch.long, device=lp.device)  # [P-1, K]
        wanted = ids >= 0
        values = lp.gather(-1, ids.clamp(min=0)).masked_fill(~wanted, 0.0)
        result = dataclasses.replace(result, target_prompt_logprobs=values.tolist())
    if spec.prompt_alt_tokens_k:
        k = spec.prompt_alt_tokens_k
        if spec.temperature == 0:  # greedy: every draw is the argmax
            draws = lp.argmax(dim=-1, keepdim=True).expand(n, k)
        else:
            probs = torch.softmax(logits / spec.temperature, dim=-1)
            draws = torch.multinomial(probs, k, replacement=True, generator=generator)
        result = dataclasses.replace(
            result, prompt_alt_tokens=draws.tolist(), prompt_alt_logprobs=lp.gather(-1, draws).tolist()
        )
    return result


def _choose(logits: torch.Tensor, spec: SampleSpec, generator: torch.Generator) -> torch.Tensor:
    """Pick the next token of every row: greedy at temperature 0, else sample."""
    if spec.temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits / spec.temperature
    if spec.top_k > 0:
        kth = torch.topk(scores, min(spec.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if spec.top_p < 1:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already cover top_p of the mass.
        drop_sorted = (cumulative - torch.softmax(sorted_scores, dim=-1)) >= spec.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _topk_rows(lp: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    values, ids = torch.topk(lp, min(k, lp.shape[-1]), dim=-1)
    return [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
