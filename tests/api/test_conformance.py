"""Protocol conformance: every endpoint of tinker-protocol.md §5.1 and §5.2 that we implement.

Requests are built with the SDK's own request types and serialised exactly as
the SDK does (``model_dump(mode="json", exclude_none=True)``, protobuf for
forward_backward); every response is validated with the SDK's own response
types (or its protobuf decoders), so a missing required field or a wrong
literal fails here before it fails a user. Endpoints we do not implement must
answer a clean JSON 4xx, never a 5xx or an empty body.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, TypeVar

import httpx
import pydantic
import pytest
from tinker import types as T
from tinker._compat import model_dump
from tinker.proto.request_conv import forward_backward_request_to_proto
from tinker.proto.response_conv import deserialize_forward_backward_output, deserialize_sample_response
from tinker.types.try_again_response import TryAgainResponse

from tests.conftest import MODEL_NAME, LiveServer

M = TypeVar("M", bound=pydantic.BaseModel)


class Api:
    """Raw HTTP as the SDK speaks it, one tenant."""

    def __init__(self, server: LiveServer, key: str) -> None:
        self.client = httpx.Client(base_url=f"{server.url}/api/v1", headers={"X-API-Key": key}, timeout=60)

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        if isinstance(body, pydantic.BaseModel):
            body = model_dump(body, exclude_unset=False, exclude_none=True, mode="json")
        response = self.client.request(method, path, json=body, **kwargs)
        assert response.status_code < 500, f"{method} {path}: {response.status_code} {response.text}"
        # An empty body is only right for 204 (the SDK reads an empty 400 as a connection error).
        assert response.content or response.status_code == 204, f"{method} {path}: empty body"
        return response

    def typed(self, model: type[M], method: str, path: str, body: Any = None, **kwargs: Any) -> M:
        response = self.call(method, path, body, **kwargs)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        assert response.headers["content-type"].startswith("application/json")
        return model.model_validate(response.json())

    def future(self, path: str, body: Any, **kwargs: Any) -> T.UntypedAPIFuture:
        return self.typed(T.UntypedAPIFuture, "POST", path, body, **kwargs)

    def result(self, future: T.UntypedAPIFuture, request_type: str, proto: bool = False) -> httpx.Response:
        """Poll retrieve_future like the SDK (long poll; try_again is re-polled at once)."""
        headers = {"X-Tinker-Request-Type": request_type}
        if proto:
            headers["Accept"] = "application/x-protobuf"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            response = self.call("POST", "retrieve_future",
                                 T.FutureRetrieveRequest(request_id=future.request_id, allow_metadata_only=True),
                                 headers=headers)
            assert response.status_code == 200, response.text
            if "application/x-protobuf" in response.headers["content-type"]:
                return response
            body = response.json()
            if body.get("type") == "try_again":
                TryAgainResponse.model_validate(body)
                continue
            assert "error" not in body, body
            return response
        raise AssertionError(f"{request_type} future never finished")


def test_every_implemented_endpoint_matches_the_sdk_types(server: LiveServer) -> None:
    key = server.create_tenant("conformance")
    api = Api(server, key)

    # §5.1 #1-#7: bootstrap, session, telemetry, capabilities.
    config = api.typed(T.ClientConfigResponse, "POST", "client/config", T.ClientConfigRequest(sdk_version="0.38.0"))
    assert config.fwdbwd_max_chunk_len > 0 and config.pjwt_auth_enabled is False
    api.typed(T.ClientDynamicConfigResponse, "POST", "client/dynamic_config", {"sdk_version": "0.38.0"})
    session_id = api.typed(T.CreateSessionResponse, "POST", "create_session",
                           T.CreateSessionRequest(tags=["conformance"], user_metadata={"k": "v"},
                                                  sdk_version="0.38.0")).session_id
    api.typed(T.SessionHeartbeatResponse, "POST", "session_heartbeat", T.SessionHeartbeatRequest(session_id=session_id))
    telemetry = T.TelemetrySendRequest(
        events=[T.SessionStartEvent(event="SESSION_START", event_id=str(uuid.uuid4()), event_session_index=0,
                                    severity="INFO", timestamp=time.time())],  # type: ignore[arg-type]
        platform="linux", sdk_version="0.38.0", session_id=session_id, process_uuid=str(uuid.uuid4()),
    )
    assert api.typed(T.TelemetryResponse, "POST", "telemetry", telemetry).status == "accepted"
    caps = api.typed(T.GetServerCapabilitiesResponse, "GET", "get_server_capabilities")
    assert [m.model_name for m in caps.supported_models] == [MODEL_NAME]
    assert T.HealthResponse.model_validate(httpx.get(f"{server.url}/api/v1/healthz").json())

    # #8-#9: a training run.
    lora = T.LoraConfig(rank=4, seed=1)
    created = api.future("create_model", T.CreateModelRequest(session_id=session_id, model_seq_id=0,
                                                              base_model=MODEL_NAME, lora_config=lora))
    model_id = T.CreateModelResponse.model_validate(api.result(created, "CreateModel").json()).model_id
    assert model_id == f"{session_id}:train:0"
    again = api.future("create_model", T.CreateModelRequest(session_id=session_id, model_seq_id=0,
                                                            base_model=MODEL_NAME, lora_config=lora))
    assert again.request_id == created.request_id, "a resubmitted model_seq_id is the same future"
    info = api.typed(T.GetInfoResponse, "POST", "get_info", T.GetInfoRequest(model_id=model_id))
    assert (info.model_id, info.lora_rank, info.model_data.model_name) == (model_id, 4, MODEL_NAME)

    # #10 (protobuf in, protobuf out) and #11.
    tokens = [3, 40, 41, 42, 43]
    datum = T.Datum(model_input=T.ModelInput.from_ints(tokens),
                    loss_fn_inputs={"target_tokens": T.TensorData(data=tokens[1:] + [44], dtype="int64", shape=[5])})
    fwd_request = T.ForwardBackwardRequest(model_id=model_id, seq_id=1, forward_backward_input=T.ForwardBackwardInput(
        data=[datum], loss_fn="cross_entropy"))
    fb = api.future("forward_backward", None, content=forward_backward_request_to_proto(fwd_request).SerializeToString(),
                    headers={"Content-Type": "application/x-protobuf"})
    fb_out = deserialize_forward_backward_output(api.result(fb, "ForwardBackward", proto=True).content)
    assert isinstance(fb_out, T.ForwardBackwardOutput) and fb_out.metrics["loss:sum"] > 0
    assert fb_out.loss_fn_outputs[0]["logprobs"].shape == [5]
    optim = api.future("optim_step", T.OptimStepRequest(model_id=model_id, seq_id=2,
                                                        adam_params=T.AdamParams(learning_rate=1e-3)))
    assert T.OptimStepResponse.model_validate(api.result(optim, "OptimStep").json()).metrics

    # #12-#14: saves and loads.
    saved = api.future("save_weights", T.SaveWeightsRequest(model_id=model_id, path="state", seq_id=3))
    state_path = T.SaveWeightsResponse.model_validate(api.result(saved, "SaveWeights").json()).path
    assert state_path == f"tinker://{model_id}/weights/state"
    named = api.future("save_weights_for_sampler",
                       T.SaveWeightsForSamplerRequest(model_id=model_id, path="sampler", seq_id=4))
    sampler_path = T.SaveWeightsForSamplerResponseInternal.model_validate(
        api.result(named, "SaveWeightsForSampler").json()).path
    assert sampler_path == f"tinker://{model_id}/sampler_weights/sampler"
    unnamed = api.future("save_weights_for_sampler",
                         T.SaveWeightsForSamplerRequest(model_id=model_id, sampling_session_seq_id=5, seq_id=5))
    ephemeral = T.SaveWeightsForSamplerResponseInternal.model_validate(
        api.result(unnamed, "SaveWeightsForSampler").json())
    assert ephemeral.sampling_session_id == f"{session_id}:sample:5"
    loaded = api.future("load_weights", T.LoadWeightsRequest(model_id=model_id, seq_id=6, path=state_path,
                                                             optimizer=True))
    T.LoadWeightsResponse.model_validate(api.result(loaded, "LoadWeights").json())
    via_load = api.future("load_weights", T.LoadWeightsRequest(session_id=session_id, model_seq_id=1,
                                                               path=state_path, optimizer=False))
    T.LoadWeightsResponse.model_validate(api.result(via_load, "LoadWeights").json())
    assert api.typed(T.GetInfoResponse, "POST", "get_info",
                     T.GetInfoRequest(model_id=f"{session_id}:train:1")).lora_rank == 4
    exported = api.future("save_weights_external", T.SaveWeightsExternalRequest(model_id=model_id, path="export",
                                                                                seq_id=7))
    external = T.SaveWeightsExternalResponseInternal.model_validate(api.result(exported, "SaveWeightsExternal").json())
    assert external.path == f"tinker://{model_id}/external_weights/export" and external.size_bytes

    # #15-#17: sampling (protobuf result, one sequence id per sample).
    sampler_id = api.typed(T.CreateSamplingSessionResponse, "POST", "create_sampling_session",
                           T.CreateSamplingSessionRequest(session_id=session_id, sampling_session_seq_id=0,
                                                          model_path=sampler_path)).sampling_session_id
    got = api.typed(T.GetSamplerResponse, "GET", f"samplers/{sampler_id}")
    assert (got.base_model, got.model_path) == (MODEL_NAME, sampler_path)
    sample = api.future("asample", T.SampleRequest(
        sampling_session_id=sampler_id, seq_id=0, num_samples=3, prompt=T.ModelInput.from_ints(tokens),
        sampling_params=T.SamplingParams(max_tokens=4, seed=0), prompt_logprobs=True, topk_prompt_logprobs=2,
        topk_sample_logprobs=2, prompt_alt_tokens_k=2,
        target_prompt_logprobs={"data": [7] * (len(tokens) - 1), "dtype": "int64",  # type: ignore[arg-type]
                                "shape": [len(tokens) - 1, 1]},
    ), headers={"X-Tinker-Sampling-Backpressure": "1"})
    assert sample.sample_sequence_ids is not None and len(set(sample.sample_sequence_ids)) == 3
    result = deserialize_sample_response(api.result(sample, "Sample", proto=True).content)
    assert len(result.sequences) == 3 and result.prompt_alt_tokens is not None
    assert result.target_prompt_logprobs is not None and result.topk_prompt_logprobs is not None

    # #18: a failed future is {"error", "category"}; an unknown one is a 404.
    bad = api.future("optim_step", {"model_id": model_id, "seq_id": 8, "type": "optim_step",
                                    "adam_params": {"learning_rate": -1.0}})
    failed = api.call("POST", "retrieve_future", T.FutureRetrieveRequest(request_id=bad.request_id,
                                                                          allow_metadata_only=True))
    while failed.json().get("type") == "try_again":
        failed = api.call("POST", "retrieve_future", {"request_id": bad.request_id, "allow_metadata_only": True})
    assert T.RequestFailedResponse.model_validate(failed.json()).category == "user"
    assert api.call("POST", "retrieve_future", {"request_id": "req-nope", "allow_metadata_only": True}).status_code == 404

    # §5.2: management.
    runs = api.typed(T.TrainingRunsResponse, "GET", "training_runs", params={"limit": 1, "offset": 0,
                                                                            "access_scope": "owned"})
    assert runs.cursor.total_count == 2 and len(runs.training_runs) == 1
    run = api.typed(T.TrainingRun, "GET", f"training_runs/{model_id}", params={"access_scope": "owned"})
    assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path == state_path
    ckpts = api.typed(T.CheckpointsListResponse, "GET", f"training_runs/{model_id}/checkpoints")
    assert {c.checkpoint_type for c in ckpts.checkpoints} == {"training", "sampler", "external"}
    mine = api.typed(T.CheckpointsListResponse, "GET", "checkpoints", params={"limit": 2, "offset": 0})
    assert mine.cursor is not None and mine.cursor.total_count == len(ckpts.checkpoints) and len(mine.checkpoints) == 2
    info_w = api.typed(T.WeightsInfoResponse, "POST", "weights_info", {"tinker_path": sampler_path})
    assert info_w.lora_rank == 4 and info_w.is_lora
    urls = api.typed(T.ExternalWeightsUrlsResponse, "GET",
                     f"training_runs/{model_id}/checkpoints/external_weights/export/external_weights_urls")
    assert "adapter_model.safetensors" in urls.urls
    ckpt_route = f"training_runs/{model_id}/checkpoints/sampler_weights/sampler"
    for method, path, body in (("POST", f"{ckpt_route}/publish", None), ("DELETE", f"{ckpt_route}/publish", None),
                               ("PUT", f"{ckpt_route}/ttl", {"ttl_seconds": 3600}),
                               ("PUT", f"{ckpt_route}/ttl", {"ttl_seconds": None}),
                               ("DELETE", ckpt_route, None)):
        assert 200 <= api.call(method, path, body).status_code < 300, (method, path)
    assert api.call("GET", f"training_runs/{model_id}/checkpoints/sampler_weights/sampler/archive").status_code == 404
    sessions = api.typed(T.ListSessionsResponse, "GET", "sessions", params={"limit": 10, "offset": 0})
    assert sessions.sessions == [session_id]
    detail = api.typed(T.GetSessionResponse, "GET", f"sessions/{session_id}", params={"access_scope": "owned"})
    assert detail.training_run_ids == [model_id, f"{session_id}:train:1"]
    assert detail.sampler_ids == [sampler_id, f"{session_id}:sample:5"] and detail.user_metadata == {"k": "v"}

    # #5 last: finishing the session (any 2xx), after which heartbeats get 410.
    finish = api.call("POST", f"sessions/{session_id}/finish", {"reason": {"type": "success"}, "detail": None})
    assert 200 <= finish.status_code < 300
    assert api.call("POST", "session_heartbeat", T.SessionHeartbeatRequest(session_id=session_id)).status_code == 410


@pytest.mark.parametrize("method, path, body", [
    ("POST", "copy_weights", {"source_path": "tinker://x:train:0/weights/a"}),
    ("PUT", "sessions/sess-x/project", {"project_id": "p"}),
    ("GET", "sessions/sess-x/trace_export", None),
    ("POST", "sessions/search", {}),
    ("GET", "audit", None),
    ("GET", "billing/usage/events", None),
    ("POST", "retrieve_futures", {}),
    ("POST", "create_custom_loss", {}),
])
def test_endpoints_we_do_not_implement_answer_a_clean_json_4xx(
    server: LiveServer, method: str, path: str, body: Any
) -> None:
    response = httpx.request(method, f"{server.url}/api/v1/{path}", json=body,
                             headers={"X-API-Key": server.keys["alice"]}, timeout=30)
    assert 400 <= response.status_code < 500 and response.status_code not in (402, 408, 409, 429)
    assert response.headers["content-type"].startswith("application/json") and response.json()
