"""Tinker API: sampling sessions and sample requests."""

from __future__ import annotations

from rest_framework.response import Response
from tinker import types as T

from sampling_app import actions
from sampling_app.specs import check_fits_model, sample_spec_from_request
from sessions_app.actions import access_active_session
from sessions_app.admission import check_num_samples
from sessions_app.api import TenantAPIView
from training_app.views import canonical_model_name, model_names
from tuft_project.exceptions import BadRequest
from tuft_project.input_checks import check_id_int


class CreateSamplingSessionView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        body = self.parse(T.CreateSamplingSessionRequest)
        check_id_int("sampling_session_seq_id", body.sampling_session_seq_id)
        session = access_active_session(self.tenant, body.session_id)
        sampler = actions.check_create_sampling_session(
            self.tenant, session, body.sampling_session_seq_id,
            canonical_model_name(body.base_model) if body.base_model else None, body.model_path, model_names()
        )
        return Response({"sampling_session_id": sampler.id, "type": "create_sampling_session"})


class SamplerDetailView(TenantAPIView):
    def get(self, request, sampler_id: str):  # type: ignore[no-untyped-def]
        sampler = actions.access_sampling_session(self.tenant, sampler_id)
        return Response({"sampler_id": sampler.id, "base_model": sampler.base_model,
                         "model_path": sampler.model_path or None})


class SampleView(TenantAPIView):
    def post(self, request):  # type: ignore[no-untyped-def]
        body = self.parse(T.SampleRequest)
        if not body.sampling_session_id:
            raise BadRequest("asample needs sampling_session_id (create a sampling session first)")
        if body.seq_id is None:
            raise BadRequest("asample needs seq_id")
        check_id_int("seq_id", body.seq_id)
        sampler = actions.access_sampling_session(self.tenant, body.sampling_session_id)
        # Admission: the request's size is bounded before its spec (and anything in it) is built.
        check_num_samples(self.tenant, body.num_samples)
        spec = sample_spec_from_request(body)  # UserInputError -> 400 before anything is queued
        check_fits_model(spec, sampler.base_model)
        max_tokens = spec.max_tokens or 0
        op = actions.check_submit_sample(
            self.tenant, sampler, body.seq_id, body.model_dump(mode="json"), len(spec.prompt), max_tokens * spec.num_samples
        )
        return Response({
            "request_id": op.request_id,
            "sample_sequence_ids": [f"{op.request_id}:{i}" for i in range(body.num_samples)],
        })
