"""LoRA training runs: forward/backward, AdamW steps, save and load.

Each run owns one named adapter on its base model's ``ModelHost`` and one
AdamW optimizer over exactly that adapter's parameters, so runs on the same
base model never touch each other's weights, gradients or optimizer state.
Gradients accumulate over forward_backward calls until optim_step applies and
clears them, as the Tinker API specifies.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftModel
from torch.optim.adam import adam as functional_adam
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from engine import batching, checkpoints, losses, multi_lora
from engine.model_host import ModelHost
from engine.types import (
    AdamSpec,
    Datum,
    EngineError,
    ForwardBackwardResult,
    ForwardBackwardSpec,
    LoraSpec,
    Tensor,
    UserInputError,
)

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    run_id: str
    host: ModelHost
    adapter: str
    lora: LoraSpec
    optimizer: torch.optim.AdamW
    # The adapter's parameters (the optimizer's) by the names a PEFT checkpoint
    # stores them under (the adapter's name taken out), looked up once when the
    # run is created: finding them walks every module of the shared model, which
    # grows with each adapter attached, so a per-step walk cost O(runs) of pure
    # Python (holding the GIL) per request, O(runs^2) per batched pass, and a
    # save through peft's state-dict helper walked it too. Adding or deleting
    # other adapters and loading weights never replace these objects.
    named_params: dict[str, torch.nn.Parameter]
    step: int = 0

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.named_params.values())


def _adapter_name(run_id: str) -> str:
    # peft adapter names become attribute keys: keep them simple and long enough
    # not to collide with peft's own "lora_" prefixes.
    return "run_" + "".join(c if c.isalnum() else "_" for c in run_id)


class TrainingEngine:
    """All training runs of one worker process."""

    def __init__(self, hosts: dict[str, ModelHost],
                 max_batch_tokens: int = batching.DEFAULT_MAX_BATCH_TOKENS) -> None:
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.hosts = hosts
        self.runs: dict[str, RunState] = {}
        # The padded tokens (rows x longest row) of one batched pass.
        self.max_batch_tokens = max_batch_tokens

    # -- lifecycle --------------------------------------------------------

    def host_for(self, model_name: str) -> ModelHost:
        if model_name not in self.hosts:
            raise UserInputError(
                f"unknown base model {model_name!r}; supported: {', '.join(sorted(self.hosts))}"
            )
        return self.hosts[model_name]

    def create_run(self, run_id: str, model_name: str, lora: LoraSpec) -> None:
        """Attach a fresh adapter and optimizer for ``run_id`` (idempotent)."""
        if run_id in self.runs:
            return
        host = self.host_for(model_name)
        adapter = _adapter_name(run_id)
        host.add_adapter(adapter, lora)
        named = host.adapter_parameters(adapter)
        optimizer = torch.optim.AdamW(list(named.values()), lr=1e-4, betas=(0.9, 0.95), eps=1e-12,
                                      weight_decay=0.0)
        self.runs[run_id] = RunState(run_id, host, adapter, lora, optimizer, named)
        logger.info("created run %s on %s (rank %d)", run_id, model_name, lora.rank)

    def has_run(self, run_id: str) -> bool:
        return run_id in self.runs

    def release_run(self, run_id: str) -> None:
        """Free a run's adapter and optimizer (its checkpoints stay on disk)."""
        state = self.runs.pop(run_id, None)
        if state is not None:
            state.host.remove_adapter(state.adapter)
            logger.info("released run %s", run_id)

    def _run(self, run_id: str) -> RunState:
        try:
            return self.runs[run_id]
        except KeyError:
            raise EngineError(f"training run {run_id!r} is not loaded in this worker") from None

    # -- forward / backward -----------------------------------------------

    def forward_backward(self, specs: list[ForwardBackwardSpec]) -> list[ForwardBackwardResult]:
        """Run a batch of requests, possibly from several runs, in order.

        Each request is its own pass and the first failure raises;
        ``forward_backward_many`` is the batched entry point.
        """
        return [self._forward_backward_one(spec) for spec in specs]

    def _forward_backward_one(self, spec: ForwardBackwardSpec) -> ForwardBackwardResult:
        run = self._run(spec.run_id)
        host = run.host
        loss_fn = losses.get_loss(spec.loss_fn)
        batch = _Batch.build(spec.data, host, losses.REQUIRED_INPUTS[spec.loss_fn])
        with host.use(run.adapter) as model, torch.set_grad_enabled(not spec.forward_only):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            out, logprobs = _score(spec, batch, logits, loss_fn)
            if not spec.forward_only:
                out.loss.backward()
        return _result(batch, logprobs, out)

    def forward_backward_many(self, specs: list[ForwardBackwardSpec]) -> list[ForwardBackwardResult | EngineError]:
        """Requests of possibly several runs as few batched passes as the token budget allows.

        One outcome per request, in order; a request that fails (unknown run,
        bad input, a loss that rejects its inputs) gets its ``EngineError`` and
        is left out of the pass, so it never fails the others and never touches
        any gradient. Requests of each base model are split, in order, into
        passes of at most ``max_batch_tokens`` padded tokens (batching.py);
        each pass is one forward and at most one backward. Gradients equal
        those of running the requests one by one (up to float rounding).
        """
        outcomes: list[ForwardBackwardResult | EngineError | None] = [None] * len(specs)
        by_host: dict[int, list[_Prepared]] = {}
        for index, spec in enumerate(specs):
            try:
                item = self._prepare(index, spec)
            except EngineError as exc:
                outcomes[index] = exc
                continue
            by_host.setdefault(id(item.run.host), []).append(item)
        for items in by_host.values():
            shapes = [(len(it.batch.lengths), int(it.batch.input_ids.shape[1])) for it in items]
            for group in batching.split_by_token_budget(shapes, self.max_batch_tokens):
                chunk = [items[i] for i in group]
                for item, outcome in zip(chunk, self._run_pass(chunk)):
                    outcomes[item.index] = outcome
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    def _prepare(self, index: int, spec: ForwardBackwardSpec) -> "_Prepared":
        """Validate one request before any pass: its run, its loss name and its data."""
        run = self._run(spec.run_id)
        loss_fn = losses.get_loss(spec.loss_fn)
        batch = _Batch.build(spec.data, run.host, losses.REQUIRED_INPUTS[spec.loss_fn])
        return _Prepared(index, spec, run, batch, loss_fn)

    def _run_pass(self, items: list["_Prepared"]) -> list[ForwardBackwardResult | EngineError]:
        """One forward (and at most one backward) over the rows of ``items``, all on one base model.

        Every row goes through its own run's adapter (multi_lora.py). Each
        request's loss is computed on its own rows; the gradients are those of
        the summed losses of the requests that train, with respect to exactly
        those runs' parameters, so forward-only rows and failed requests never
        give anyone a gradient (not even a zero one, which AdamW would step on).
        The decoder runs once over all rows, forward and backward; on Qwen and
        Llama models the unembedding and loss run request by request
        (``_pass_unembedding_per_request``).
        """
        host = items[0].run.host
        training = {it.run.adapter for it in items if not it.spec.forward_only}
        rows = batching.concat_rows([(it.batch.input_ids, it.batch.attention_mask, it.run.adapter) for it in items])
        with host.lock:
            model = host.peft
            assert model is not None  # every run has an adapter on its host
            # NOTE(batch): set_adapter (host.use) leaves only one adapter trainable;
            # here every training run's adapter must be, and forward-only runs'
            # adapters need no autograd graph at all.
            params = {it.run.adapter: it.run.params for it in items}
            for adapter, adapter_params in params.items():
                for p in adapter_params:
                    p.requires_grad_(adapter in training)
            _eval_mode(model)
            if _plain_unembedding(model.get_base_model()):
                scored = _pass_unembedding_per_request(host, rows, items, params)
            else:
                scored = _pass_whole_model(host, rows, items, params)
            return [s if isinstance(s, EngineError) else _result(it.batch, s[1], s[0])
                    for it, s in zip(items, scored)]

    # -- optimizer --------------------------------------------------------

    def optim_step(self, run_id: str, adam: AdamSpec) -> dict[str, float]:
        """Apply accumulated gradients with AdamW (the run's own ``torch.optim.AdamW``), then clear them."""
        _check_adam(adam)
        run = self._run(run_id)
        with run.host.lock:
            grad_norm = _prepare_step(run, adam)
            run.optimizer.step()
            return _end_step(run, adam, grad_norm)

    def optim_step_many(self, steps: list[tuple[str, AdamSpec]]) -> list[dict[str, float] | EngineError]:
        """Several runs' optim_steps as few fused AdamW updates as their hyperparameters allow.

        One outcome per ``(run_id, adam)``, in order; a step that fails (bad
        hyperparameters, unknown run) gets its ``EngineError`` and touches
        nothing. Each run keeps its own moments and step count (its optimizer's
        ``state``, as ``optim_step`` leaves it) and is clipped by its own norm;
        only the element-wise update is shared: the runs whose ``AdamSpec``
        is equal go through one multi-tensor (``torch._foreach_*``) AdamW call
        over all their parameters, instead of one small update per tensor per
        run. Results equal ``optim_step`` run by run up to float rounding
        (tests/engine/test_batching.py).
        """
        outcomes: list[dict[str, float] | EngineError | None] = [None] * len(steps)
        by_host: dict[int, list[tuple[int, RunState, AdamSpec]]] = {}
        for index, (run_id, adam) in enumerate(steps):
            try:
                _check_adam(adam)
                run = self._run(run_id)
            except EngineError as exc:
                outcomes[index] = exc
                continue
            by_host.setdefault(id(run.host), []).append((index, run, adam))
        for items in by_host.values():
            with items[0][1].host.lock:
                norms = {index: _prepare_step(run, adam) for index, run, adam in items}
                by_spec: dict[AdamSpec, list[RunState]] = {}
                for _, run, adam in items:
                    by_spec.setdefault(adam, []).append(run)
                for adam, runs in by_spec.items():
                    _fused_adamw(runs, adam)
                for index, run, adam in items:
                    outcomes[index] = _end_step(run, adam, norms[index])
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    # -- checkpoints ------------------------------------------------------

    def save(self, run_id: str, directory: Path, with_optimizer: bool, overwrite: bool = False) -> int:
        """Write the run's adapter (and optimizer) as a PEFT checkpoint; return its size in bytes."""
        run = self._run(run_id)
        host = run.host
        with host.lock, checkpoints.atomic_directory(directory, overwrite) as tmp:
            assert host.peft is not None
            # NOTE(batch): the run's own parameters under PEFT's key names: what
            # get_peft_model_state_dict returns for a LoRA adapter (tested), without
            # its walk over every module and parameter of the shared model, which
            # grows with every adapter loaded (a save took 7 ms with one run on the
            # small model and 80 ms with 64).
            save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in run.named_params.items()},
                      str(tmp / checkpoints.ADAPTER_WEIGHTS), metadata={"format": "pt"})
            config = host.peft.peft_config[run.adapter]
            config.base_model_name_or_path = host.spec.model_path
            config.save_pretrained(str(tmp))
            if with_optimizer:
                torch.save({"optimizer": run.optimizer.state_dict(), "step": run.step},
                           tmp / checkpoints.OPTIMIZER_STATE)
            checkpoints.write_meta(tmp, {
                "base_model": host.spec.model_name,
                "lora": asdict(run.lora),
                "step": run.step,
                "has_optimizer": with_optimizer,
            })
        return checkpoints.directory_size(directory)

    def load(self, run_id: str, model_name: str, directory: Path, with_optimizer: bool) -> LoraSpec:
        """Create ``run_id`` (if needed) and load a checkpoint's weights (and optimizer) into it."""
        if not (directory / checkpoints.ADAPTER_WEIGHTS).exists():
            raise UserInputError(f"checkpoint {directory.name!r} has no adapter weights")
        lora = checkpoints.lora_spec_from_checkpoint(directory)
        meta = checkpoints.read_meta(directory)
        existing = self.runs.get(run_id)
        if existing is not None and _shape(existing.lora) != _shape(lora):
            raise UserInputError("checkpoint LoRA config does not match this training run")
        self.create_run(run_id, model_name, lora)
        run = self.runs[run_id]
        state = load_file(str(directory / checkpoints.ADAPTER_WEIGHTS))
        with run.host.lock:
            assert run.host.peft is not None
            result = set_peft_model_state_dict(run.host.peft, state, adapter_name=run.adapter)
            if getattr(result, "unexpected_keys", None):
                raise UserInputError("checkpoint does not fit this base model: unexpected adapter weights")
            for p in run.params:
                p.grad = None
            if with_optimizer:
                opt_path = directory / checkpoints.OPTIMIZER_STATE
                if not opt_path.exists():
                    raise UserInputError(f"checkpoint {directory.name!r} has no optimizer state")
                saved = torch.load(opt_path, map_location=run.host.device, weights_only=True)
                run.optimizer.load_state_dict(saved["optimizer"])
                run.step = int(saved.get("step", meta.get("step", 0)))
            else:
                run.optimizer.state.clear()
                run.step = 0
        return lora


def _check_adam(adam: AdamSpec) -> None:
    for name, value in asdict(adam).items():
        if value < 0 or value != value:
            raise UserInputError(f"adam_params.{name} must be a non-negative number, got {value}")
    if not (0 <= adam.beta1 < 1 and 0 <= adam.beta2 < 1):
        raise UserInputError("adam_params.beta1 and beta2 must be in [0, 1)")


def _prepare_step(run: RunState, adam: AdamSpec) -> float:
    """Set the step's hyperparameters on the run's optimizer, clip; return the gradient norm before clipping."""
    for group in run.optimizer.param_groups:
        group["lr"] = adam.learning_rate
        group["betas"] = (adam.beta1, adam.beta2)
        group["eps"] = adam.eps
        group["weight_decay"] = adam.weight_decay
    params = run.params
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else 0.0
    if adam.grad_clip_norm > 0 and grads:
        torch.nn.utils.clip_grad_norm_(params, adam.grad_clip_norm)
    return grad_norm


def _end_step(run: RunState, adam: AdamSpec, grad_norm: float) -> dict[str, float]:
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return {"grad_norm:mean": grad_norm, "learning_rate:mean": adam.learning_rate, "step:max": float(run.step)}


def _fused_adamw(runs: list[RunState], adam: AdamSpec) -> None:
    """One multi-tensor AdamW update over the parameters of ``runs`` (all stepped with ``adam``).

    Each run's moments and step counts stay in its own optimizer's ``state``:
    ``_init_group`` (torch's own lazy state set-up, what ``AdamW.step`` calls)
    hands them over per run, and the functional ``adam`` updates them in place.
    Bias corrections use each tensor's own step, so runs at different steps mix.
    """
    params: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    exp_avgs: list[torch.Tensor] = []
    exp_avg_sqs: list[torch.Tensor] = []
    max_exp_avg_sqs: list[torch.Tensor] = []
    steps: list[torch.Tensor] = []
    has_complex = False
    for run in runs:
        for group in run.optimizer.param_groups:
            # NOTE(batch): _init_group is private to torch.optim.Adam (its signature
            # is checked by the equality test); it keeps the state format that
            # state_dict(), load_state_dict() and optimizer.step() expect.
            has_complex |= run.optimizer._init_group(  # type: ignore[attr-defined]
                group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
    if not params:
        return
    with torch.no_grad():  # as Optimizer.step: the update is not part of any graph
        functional_adam(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
            foreach=True, has_complex=has_complex, decoupled_weight_decay=True,
            amsgrad=False, beta1=adam.beta1, beta2=adam.beta2, lr=adam.learning_rate,
            weight_decay=adam.weight_decay, eps=adam.eps, maximize=False,
        )


def _shape(lora: LoraSpec) -> tuple[int, bool, bool, bool]:
    """What must agree for weights to load into an adapter (the seed need not)."""
    return (lora.rank, lora.train_attn, lora.train_mlp, lora.train_unembed)


def _tensor(t: torch.Tensor) -> Tensor:
    return Tensor(data=t.reshape(-1).tolist(), shape=list(t.shape), dtype="float32")


def _score(spec: ForwardBackwardSpec, batch: "_Batch", logits: torch.Tensor,
           loss_fn: losses.LossFn) -> tuple[losses.LossOutput, torch.Tensor]:
    """The request's loss and target logprobs from its own logits ``[B, T, V]``."""
    # At least fp32 (bf16 models upcast); an fp64 model stays fp64 (loss tests).
    logprobs_all = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    targets = batch.targets
    if targets.dim() == 2:
        logprobs = logprobs_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    else:
        logprobs = logprobs_all.gather(-1, targets)
    out = loss_fn(losses.LossInputs(logprobs, batch.mask, batch.inputs, spec.loss_fn_config))
    return out, logprobs


def _result(batch: "_Batch", logprobs: torch.Tensor, out: losses.LossOutput) -> ForwardBackwardResult:
    outputs = []
    lp = logprobs.detach().cpu()
    el = out.elementwise.detach().cpu()
    for i, n in enumerate(batch.lengths):
        outputs.append({
            "logprobs": _tensor(lp[i, :n]),
            "elementwise_loss": _tensor(el[i, :n]),
        })
    metrics = {"loss:sum": float(out.loss.detach()), **out.metrics}
    return ForwardBackwardResult(outputs=outputs, metrics=metrics)


_Scored = tuple[losses.LossOutput, torch.Tensor] | EngineError


def _pass_whole_model(host: ModelHost, rows: batching.RowBatch, items: list["_Prepared"],
                      params: dict[str, list[torch.nn.Parameter]]) -> list[_Scored]:
    """The pass for any causal LM: all rows' logits at once, one backward of the summed losses."""
    training = any(not it.spec.forward_only for it in items)
    with torch.set_grad_enabled(training):
        with multi_lora.rows_through_adapters(host, rows.adapter_names) as causal_lm:
            logits = causal_lm(input_ids=rows.input_ids, attention_mask=rows.attention_mask).logits
        # NOTE(batch): split, not index: the backward of a split concatenates the
        # requests' gradients once, where each slice's backward would fill a
        # zero tensor the size of all the logits.
        per_request = logits.split([s.stop - s.start for s in rows.row_slices])
        scored = [_score_or_error(it, own) for it, own in zip(items, per_request)]
        trained = [(it, s) for it, s in zip(items, scored)
                   if not it.spec.forward_only and not isinstance(s, EngineError)]
        if trained:
            total = torch.stack([s[0].loss for _, s in trained]).sum()  # type: ignore[index]
            adapters = {it.run.adapter for it, _ in trained}
            total.backward(inputs=[p for adapter in adapters for p in params[adapter]])
    return scored


def _pass_unembedding_per_request(host: ModelHost, rows: batching.RowBatch, items: list["_Prepared"],
                                  params: dict[str, list[torch.nn.Parameter]]) -> list[_Scored]:
    """The pass for a model whose logits are ``lm_head(last hidden state)``: the decoder once over
    all rows, then each request's unembedding, loss and their backward, one request at a time.

    NOTE(batch): the logits are the largest tensors of a pass (rows x T x vocab:
    32 MB for 8 x 128 tokens of an 8k vocabulary, 5 GB for 8192 tokens of Qwen's
    152k). Made for all rows at once, they and their gradient (log_softmax
    backward, the join of per-adapter pieces) fall out of the CPU caches and
    the batched pass was slower than the requests one by one. Here one
    request's logits exist at a time, as in a lone pass: the unembedding and
    the loss are differentiated right away down to the request's own hidden
    states (a leaf cut from the decoder's output), and one backward through the
    decoder then takes all the requests' hidden-state gradients at once. The
    gradients are those of the summed losses (each request's loss depends on
    its own rows only), so they equal one pass per request.
    """
    training = any(not it.spec.forward_only for it in items)
    with torch.set_grad_enabled(training), multi_lora.rows_through_adapters(host, rows.adapter_names) as causal_lm:
        hidden = causal_lm.get_decoder()(input_ids=rows.input_ids, attention_mask=rows.attention_mask,
                                         use_cache=False).last_hidden_state
    unembed = causal_lm.get_output_embeddings()
    scored: list[_Scored] = []
    pieces: list[torch.Tensor] = []  # the decoder outputs of the requests that train
    piece_grads: list[torch.Tensor] = []
    trained_adapters: set[str] = set()
    for item, piece in zip(items, hidden.split([s.stop - s.start for s in rows.row_slices])):
        trains = not item.spec.forward_only
        own = piece.detach().requires_grad_(trains and piece.requires_grad)
        with torch.set_grad_enabled(trains):
            logits = multi_lora.linear_through_adapter(unembed, own, item.run.adapter)
            outcome = _score_or_error(item, logits)
            if trains and not isinstance(outcome, EngineError):
                trained_adapters.add(item.run.adapter)
                if outcome[0].loss.requires_grad:
                    # The unembedding's own LoRA parameters get their gradient here,
                    # the decoder's below (each input list's others are not reached).
                    outcome[0].loss.backward(inputs=[*([own] if own.requires_grad else []),
                                                     *params[item.run.adapter]])
                if own.grad is not None:
                    pieces.append(piece)
                    piece_grads.append(own.grad)
        del logits  # before the next request's: one request's logits at a time
        scored.append(outcome)
    if pieces:
        torch.autograd.backward(pieces, piece_grads,
                                inputs=[p for adapter in trained_adapters for p in params[adapter]])
    return scored


def _eval_mode(model: PeftModel) -> None:
    # No dropout anywhere in a pass (LoRA dropout is 0 and the base is loaded in
    # eval mode; this keeps it so). eval() walks every module: only when needed.
    if model.training:
        model.eval()


def _plain_unembedding(causal_lm: torch.nn.Module) -> bool:
    """The model's logits are just ``lm_head(last hidden state)`` (no soft-capping or scaling).

    True for the Qwen and Llama families; any other model takes the whole
    causal-LM forward (same results, all logits at once).
    """
    config = causal_lm.config
    return (getattr(config, "final_logit_softcapping", None) is None and not hasattr(config, "logit_scale")
            and hasattr(causal_lm, "get_decoder") and type(causal_lm).__name__.startswith(("Qwen", "Llama")))


def _score_or_error(item: "_Prepared", logits: torch.Tensor) -> tuple[losses.LossOutput, torch.Tensor] | EngineError:
    """The request's loss and logprobs from its rows' logits, or why its loss refused them."""
    length = item.batch.input_ids.shape[1]
    if logits.shape[1] != length:  # its rows, cut back to its own padded length
        logits = logits[:, :length]
    try:
        return _score(item.spec, item.batch, logits, item.loss_fn)
    except EngineError as exc:
        return exc


@dataclass
class _Prepared:
    """A validated request waiting for its pass."""

    index: int  # its position in the caller's list
    spec: ForwardBackwardSpec
    run: RunState
    batch: "_Batch"
    loss_fn: losses.LossFn


@dataclass
class _Batch:
    """A padded batch: right-padded so padding never influences real positions."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, T] or [B, T, K]
    mask: torch.Tensor  # [B, T] float
    inputs: dict[str, torch.Tensor]  # [B, T] (or [B, T, K]) float
    lengths: list[int]

    @staticmethod
    def build(data: list[Datum], host: ModelHost, required: tuple[str, ...]) -> "_Batch":
        if not data:
            raise UserInputError("forward_backward needs at least one datum")
        device = host.device
        lengths = [len(d.tokens) for d in data]
        B, T = len(data), max(lengths)
        k_dims = set()
        for i, d in enumerate(data):
            host.check_tokens(d.tokens, f"datum {i} model_input")
            target = d.loss_fn_inputs.get("target_tokens")
            if target is None:
                raise UserInputError(f"datum {i} is missing loss_fn_inputs['target_tokens']")
            if not target.shape or target.shape[0] != len(d.tokens) or len(target.shape) > 2:
                raise UserInputError(
                    f"datum {i}: target_tokens has shape {target.shape} but model_input has "
                    f"{len(d.tokens)} tokens (target_tokens must be [{len(d.tokens)}] or [{len(d.tokens)}, K])"
                )
            k_dims.add(tuple(target.shape[1:]))
            bad = [t for t in target.data if not 0 <= int(t) < host.vocab_size]
            if bad:
                raise UserInputError(f"datum {i}: target token id {bad[0]} is outside the vocabulary (0..{host.vocab_size - 1})")
            for name in required:
                if name not in d.loss_fn_inputs:
                    raise UserInputError(f"datum {i} is missing loss_fn_inputs[{name!r}] required by this loss")
            for name, value in d.loss_fn_inputs.items():
                if name != "target_tokens" and list(value.shape) != list(target.shape):
                    raise UserInputError(
                        f"datum {i}: loss_fn_inputs[{name!r}] has shape {value.shape}, expected {target.shape}"
                    )
        if len(k_dims) > 1:
            raise UserInputError("all data in one request must have target_tokens of the same rank")
        trailing = list(next(iter(k_dims)))
        input_ids = torch.zeros(B, T, dtype=torch.long)
        attention = torch.zeros(B, T, dtype=torch.long)
        targets = torch.zeros(B, T, *trailing, dtype=torch.long)
        names = sorted({n for d in data for n in d.loss_fn_inputs if n != "target_tokens"})
        inputs = {n: torch.zeros(B, T, *trailing, dtype=torch.float32) for n in names}
        for i, d in enumerate(data):
            n = lengths[i]
            input_ids[i, :n] = torch.tensor(d.tokens, dtype=torch.long)
            attention[i, :n] = 1
            t = d.loss_fn_inputs["target_tokens"]
            targets[i, :n] = torch.tensor(t.data, dtype=torch.long).reshape(t.shape)
            for name in names:
                if name in d.loss_fn_inputs:
                    v = d.loss_fn_inputs[name]
                    inputs[name][i, :n] = torch.tensor(v.data, dtype=torch.float32).reshape(v.shape)
                elif name in losses.MISSING_INPUT_FILL:  # weights 1, per-token overrides "unset"
                    inputs[name][i, :n] = losses.MISSING_INPUT_FILL[name]
        # An explicit weights input replaces the default of 1 on real tokens.
        return _Batch(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            targets=targets.to(device),
            mask=attention.to(device=device, dtype=torch.float32),
            inputs={n: v.to(device) for n, v in inputs.items()},
            lengths=lengths,
        )
