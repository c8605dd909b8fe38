"""The sample operation: decode from the base model with the checkpoint's adapter."""

from __future__ import annotations

import dataclasses

from tinker import types as T

from engine.runtime import Engine
from engine.types import UserInputError
from sampling_app.specs import sample_spec_from_request
from training_app import protocol
from training_app.checkpoint_paths import absolute
from training_app.jobs import Outcome, handles
from training_app.models import Operation



@handles(Operation.Kind.SAMPLE)
def _sample(engine: Engine, op: Operation) -> Outcome:
    sampler = op.sampling_session
    assert sampler is not None
    body = T.SampleRequest.model_validate(op.request)
    spec = sample_spec_from_request(body)
    eos = engine.host(sampler.base_model).eos_token_id
    if (spec.stop_strings or spec.stop_token_seqs) and eos is not None:
        # Explicit stops apply in addition to EOS, as in vLLM; only stop=[] disables EOS.
        spec = dataclasses.replace(spec, stop_token_seqs=(spec.stop_token_seqs or []) + [[eos]])
    adapter_dir = None
    if sampler.model_path:
        if sampler.checkpoint is None:
            raise UserInputError(f"checkpoint {sampler.model_path} has been deleted")
        adapter_dir = absolute(sampler.checkpoint.storage_path)
    result = engine.sample(sampler.base_model, adapter_dir, spec)
    blob = protocol.encode_sample_response(result, spec.topk_prompt_logprobs, spec.topk_sample_logprobs)
    sampled = sum(len(s.tokens) for s in result.sequences)
    return Outcome(blob=blob, num_tokens=len(spec.prompt) + sampled,
                   prefill_tokens=len(spec.prompt), sampled_tokens=sampled)
