"""Tinker API: training runs, their ordered operations, and checkpoints."""

from __future__ import annotations

import logging
import math

from rest_framework.response import Response
from tinker import types as T

from engine.types import LoraSpec
from sessions_app.actions import access_active_session
from sessions_app.admission import check_fwdbwd_tokens
from sessions_app.api import TenantAPIView
from sessions_app.quotas import check_token_budget
from training_app import actions, protocol
from training_app.checkpoint_paths import check_name
from training_app.models import Operation
from training_app.parsers import ProtobufParser
from tuft_project.exceptions import BadRequest
from tuft_project.input_checks import MAX_DB_INT, check_bigint, check_id_int, check_metadata
from tuft_project.parsers import JSONBodyParser
from tuft_project.runtime import get_config

logger = logging.getLogger(__name__)

# The longest checkpoint TTL, as the SDK documents it (10 years).
MAX_TTL_S = 10 * 365 * 24 * 3600


def future_response(op: Operation) -> Response:
    body = {"request_id": op.request_id}
    if op.training_run_id:
        body["model_id"] = op.training_run_id
    return Response(body)


def model_names() -> set[str]:
    return {m.model_name for m in get_config().models}


def canonical_model_name(name_or_path: str) -> str:
    """The configured name of the base model asked for by its name or its model_path (else unchanged)."""
    spec = get_config().find_model(name_or_path)
    return spec.model_name if spec is not None else name_or_path


class CreateModelView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        body = self.parse(T.CreateModelRequest)
        body = body.model_copy(update={"base_model": canonical_model_name(body.base_model)})
        check_id_int("model_seq_id", body.model_seq_id)
        if body.lora_config is None:
            raise BadRequest("create_model needs lora_config: this server trains LoRA adapters only")
        check_bigint("lora_config.seed", body.lora_config.seed)
        check_metadata("user_metadata", body.user_metadata)
        session = access_active_session(self.tenant, body.session_id)
        op = actions.check_create_model(self.tenant, session, body, model_names())
        return future_response(op)


class GetInfoView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        body = self.parse(T.GetInfoRequest)
        run = actions.access_run(self.tenant, body.model_id)
        spec = next((m for m in get_config().models if m.model_name == run.base_model), None)
        return Response({
            "type": "get_info",
            "model_id": run.id,
            "model_data": {
                "arch": "lora",
                "model_name": run.base_model,
                # models.yaml's tokenizer_id (default: the model name), never the server's
                # model directory: that path means nothing on the client's machine.
                "tokenizer_id": (spec.tokenizer_id or spec.model_name) if spec else run.base_model,
            },
            "optimizer_config": {"type": "adamw"},
            "is_lora": True,
            "lora_rank": run.lora_rank,
            "model_name": run.base_model,
            # Not in the SDK's GetInfoResponse (it ignores the key), but visible on the
            # wire: the whole LoRA configuration the run actually trains with.
            "lora_config": {
                "rank": run.lora_rank, "seed": run.lora_seed, "train_mlp": run.train_mlp,
                "train_attn": run.train_attn, "train_unembed": run.train_unembed,
                "alpha": LoraSpec(rank=run.lora_rank).alpha,
            },
        })


class ForwardBackwardView(TenantAPIView):
    parser_classes = [ProtobufParser, JSONBodyParser]

    def post(self, request):  # type: ignore[no-untyped-def]
        blob = request.data
        if not isinstance(blob, bytes):
            raise BadRequest("forward_backward expects a protobuf body (Content-Type: application/x-protobuf)")
        msg = protocol.parse_forward_backward(blob)
        run = actions.access_run(self.tenant, msg.model_id)
        kind = Operation.Kind.FORWARD if msg.forward_only else Operation.Kind.FORWARD_BACKWARD

        def validate() -> None:
            # Admission: sizes first, from the message as sent, before any tensor is expanded.
            tokens = protocol.count_tokens(msg)
            check_fwdbwd_tokens(self.tenant, tokens)
            protocol.decode_forward_backward_message(msg)
            check_token_budget(self.tenant, "train", tokens)

        op = actions.check_submit_run_op(
            self.tenant, run, kind, msg.seq_id, {"loss_fn": msg.loss_fn, "num_data": len(msg.data)},
            blob=blob, validate=validate,
        )
        return future_response(op)


class OptimStepView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        body = self.parse(T.OptimStepRequest)
        run = actions.access_run(self.tenant, body.model_id)

        def validate() -> None:
            # JSON's 1e999 arrives as infinity: the user's mistake, refused here (the stored
            # request would hold null instead, and the worker would fail as the server's fault).
            if isinstance(body.optim_params, T.AdamParams):
                for name, value in body.optim_params.model_dump().items():
                    if not math.isfinite(value):
                        raise BadRequest(f"adam_params.{name} must be a finite number, got {value}")

        op = actions.check_submit_run_op(
            self.tenant, run, Operation.Kind.OPTIM_STEP, _seq(body.seq_id), body.model_dump(mode="json", by_alias=True),
            validate=validate,
        )
        return future_response(op)


class SaveWeightsView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        body = self.parse(T.SaveWeightsRequest)
        run = actions.access_run(self.tenant, body.model_id)

        def validate() -> None:
            check_name(body.path or "")
            check_ttl(body.ttl_seconds)

        op = actions.check_submit_run_op(
            self.tenant, run, Operation.Kind.SAVE_WEIGHTS, _seq(body.seq_id), body.model_dump(mode="json"),
            validate=validate,
        )
        return future_response(op)


class SaveWeightsForSamplerView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        body = self.parse(T.SaveWeightsForSamplerRequest)
        run = actions.access_run(self.tenant, body.model_id)

        def validate() -> None:
            check_id_int("sampling_session_seq_id", body.sampling_session_seq_id)
            if body.path:
                check_name(body.path)
            check_ttl(body.ttl_seconds)

        op = actions.check_submit_run_op(
            self.tenant, run, Operation.Kind.SAVE_WEIGHTS_FOR_SAMPLER, _seq(body.seq_id), body.model_dump(mode="json"),
            validate=validate,
        )
        return future_response(op)


class SaveWeightsExternalView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        body = self.parse(T.SaveWeightsExternalRequest)
        run = actions.access_run(self.tenant, body.model_id)

        def validate() -> None:
            check_name(body.path)
            check_ttl(body.ttl_seconds)
            if body.age_encryption_recipients:
                raise BadRequest("age_encryption_recipients is not supported: exports are stored unencrypted")

        op = actions.check_submit_run_op(
            self.tenant, run, Operation.Kind.SAVE_WEIGHTS_EXTERNAL, _seq(body.seq_id), body.model_dump(mode="json"),
            validate=validate,
        )
        return future_response(op)


def check_ttl(ttl_seconds: int | None) -> None:
    """A checkpoint TTL: None (never expires) or 1 s to 10 years."""
    if ttl_seconds is not None and not 1 <= ttl_seconds <= MAX_TTL_S:
        raise BadRequest(f"ttl_seconds must be between 1 and {MAX_TTL_S} (10 years), or null; got {ttl_seconds}")


class LoadWeightsView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        body = self.parse(T.LoadWeightsRequest)
        if body.model_id:  # load_state*: an operation of an existing run
            run = actions.access_run(self.tenant, body.model_id)
            op = actions.check_submit_run_op(
                self.tenant, run, Operation.Kind.LOAD_WEIGHTS, _seq(body.seq_id), body.model_dump(mode="json"),
                validate=lambda: actions.access_readable_checkpoint(self.tenant, body.path) and None,
            )
        else:  # create_training_client_from_state*: a new run created by the load
            if body.session_id is None or body.model_seq_id is None:
                raise BadRequest("load_weights needs model_id, or session_id and model_seq_id")
            check_id_int("model_seq_id", body.model_seq_id)
            session = access_active_session(self.tenant, body.session_id)
            op = actions.check_create_run_from_checkpoint(self.tenant, session, body)
        return future_response(op)


def _seq(seq_id: int | None) -> int:
    if seq_id is None or not 1 <= seq_id <= MAX_DB_INT:
        raise BadRequest(f"seq_id must be an integer in 1..{MAX_DB_INT}")
    return seq_id
