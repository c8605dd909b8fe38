"""Sampling by real autoregressive decoding with a LoRA adapter applied.

The default back end runs Hugging Face models directly (CPU or GPU): one
prefill of the prompt, then token-by-token decoding with the KV cache for all
``num_samples`` rows at once. Reported logprobs are those of the model itself
(before temperature, top-k or top-p), so they equal the trainer's logprobs of
the same tokens, which RL code relies on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import OrderedDict
from pathlib import Path

import torch
from peft import PeftModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from engine import checkpoints
from engine.model_host import ModelHost
from engine.sample_checks import validate_sample_spec
from engine.types import SampledSequence, SampleResult, SampleSpec, UserInputError

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128


class SamplerAdapterCache:
    """Sampler checkpoints loaded as named adapters, least recently used evicted."""

    def __init__(self, host: ModelHost, capacity: int = 8) -> None:
        self.host = host
        self.capacity = capacity
        self._loaded: OrderedDict[str, str] = OrderedDict()  # cache key -> adapter name

    def adapter_for(self, directory: Path) -> str:
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
            if host.peft is None:
                host.peft = PeftModel.from_pretrained(host.base, str(directory), adapter_name=name)
            else:
                host.peft.load_adapter(str(directory), adapter_name=name)
            self._loaded[key] = name
            while len(self._loaded) > self.capacity:
                _, old = self._loaded.popitem(last=False)
                host.remove_adapter(old)
        return name


class HFSampler:
    """Decode with transformers on the host's device."""

    def __init__(self, host: ModelHost) -> None:
        self.host = host
        self.adapters = SamplerAdapterCache(host)

    def sample(self, adapter_dir: Path | None, spec: SampleSpec) -> SampleResult:
        host = self.host
        host.check_tokens(spec.prompt, "prompt")
        validate_sample_spec(spec)
        if spec.target_prompt_ids is not None:
            bad = [t for row in spec.target_prompt_ids for t in row if t >= host.vocab_size]
            if bad:
                raise UserInputError(
                    f"target_prompt_logprobs has token id {bad[0]} outside the vocabulary (0..{host.vocab_size - 1})"
                )
        room = host.spec.max_model_len - len(spec.prompt)
        max_tokens = spec.max_tokens if spec.max_tokens is not None else min(DEFAULT_MAX_TOKENS, room)
        if max_tokens > room:
            raise UserInputError(
                f"prompt ({len(spec.prompt)} tokens) + max_tokens ({max_tokens}) exceeds "
                f"max_model_len {host.spec.max_model_len}"
            )
        adapter = self.adapters.adapter_for(adapter_dir) if adapter_dir is not None else None
        stop_seqs = spec.stop_token_seqs
        if stop_seqs is None:
            stop_seqs = [[host.eos_token_id]] if host.eos_token_id is not None else []
        generator = torch.Generator(device=host.device)
        generator.manual_seed(spec.seed if spec.seed is not None else int(torch.randint(0, 2**62, ()).item()))

        with torch.no_grad():
            return self._decode(adapter, spec, max_tokens, stop_seqs, generator)

    def _forward(self, adapter: str | None, **inputs: object) -> CausalLMOutputWithPast:
        # NOTE(sched): the model lock is held per forward call, not per request: between
        # two decode steps a training step (another lane) can run, so one long decode
        # never holds the shared model for its whole length.
        with self.host.use(adapter) as model:
            return model(**inputs)

    def _decode(
        self,
        adapter: str | None,
        spec: SampleSpec,
        max_tokens: int,
        stop_seqs: list[list[int]],
        generator: torch.Generator,
    ) -> SampleResult:
        host = self.host
        n = spec.num_samples
        prompt = torch.tensor([spec.prompt], dtype=torch.long, device=host.device)
        out = self._forward(adapter, input_ids=prompt, use_cache=True)
        scored = _score_prompt(out.logits[0, :-1].float(), prompt[0, 1:], spec, generator)
        cache = out.past_key_values
        if n > 1:
            cache.batch_repeat_interleave(n)
        logits = out.logits[:, -1].float().expand(n, -1)

        tokens: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        topks: list[list[list[tuple[int, float]]]] = [[] for _ in range(n)]
        done = [False] * n
        stopped = [False] * n
        attention = torch.ones(n, len(spec.prompt), dtype=torch.long, device=host.device)
        for _ in range(max_tokens):
            lp = torch.log_softmax(logits, dim=-1)  # [n, V]
            next_tokens = _choose(logits, spec, generator)  # [n]
            chosen_lp = lp.gather(-1, next_tokens.unsqueeze(-1)).squeeze(-1).tolist()
            rows_topk = _topk_rows(lp, spec.topk_sample_logprobs) if spec.topk_sample_logprobs else None
            for i, tok in enumerate(next_tokens.tolist()):
                if done[i]:
                    continue
                tokens[i].append(tok)
                logprobs[i].append(chosen_lp[i])
                if rows_topk is not None:
                    topks[i].append(rows_topk[i])
                if self._should_stop(tokens[i], stop_seqs, spec.stop_strings):
                    done[i] = stopped[i] = True
            if all(done):
                break
            attention = torch.cat([attention, torch.ones(n, 1, dtype=torch.long, device=host.device)], dim=1)
            out = self._forward(adapter, input_ids=next_tokens.unsqueeze(-1), past_key_values=cache,
                                attention_mask=attention, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1].float()

        sequences = [
            SampledSequence(
                tokens=tokens[i],
                logprobs=logprobs[i],
                stop_reason="stop" if stopped[i] else "length",
                topk=topks[i] if spec.topk_sample_logprobs else None,
            )
            for i in range(n)
        ]
        return dataclasses.replace(scored, sequences=sequences)

    def _should_stop(self, tokens: list[int], stop_seqs: list[list[int]], stop_strings: list[str]) -> bool:
        for seq in stop_seqs:
            if seq and tokens[-len(seq):] == seq:
                return True
        if stop_strings:
            # Decode only a tail long enough to contain any stop string.
            tail = self.host.tokenizer.decode(tokens[-32:])
            return any(s and s in tail for s in stop_strings)
        return False


def _score_prompt(
    logits: torch.Tensor, targets: torch.Tensor, spec: SampleSpec, generator: torch.Generator
) -> SampleResult:
    """Everything a request asks about the prompt itself, from the one prefill.

    ``logits`` [P-1, V] are the model's predictions for prompt positions 1..P-1
    and ``targets`` [P-1] the prompt tokens there. Returns a result with no
    sequences; unscored positions are None (position 0 always, and every
    position before the last ``prompt_logprobs_last_n``).
    """
    wants_scores = spec.prompt_logprobs or spec.topk_prompt_logprobs
    if not (wants_scores or spec.target_prompt_ids is not None or spec.prompt_alt_tokens_k):
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
