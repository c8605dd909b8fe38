"""Usage through the SDK: AdminClient's billing queries answer the tenant's real figures."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import openai
import pytest
import tinker
from tinker import types

from tests.conftest import MODEL_NAME, LiveServer

TIMEOUT = 120


def _today_window() -> tuple[str, str]:
    start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return start.isoformat(), (start + timedelta(days=1)).isoformat()


def _tokens(usage: types.BillingUsageResponse) -> dict[str, int]:
    totals: dict[str, int] = {}
    for event in usage.data:
        totals[event.event_info.type] = totals.get(event.event_info.type, 0) + event.event_info.token_count
    return totals


def test_billing_usage_and_checkpoint_storage_are_the_tenants_own(server: LiveServer) -> None:
    key = server.create_tenant("usage-carol")
    service = tinker.ServiceClient(base_url=server.url, api_key=key)
    admin = tinker.AdminClient(base_url=server.url, api_key=key)
    assert _tokens(admin.get_billing_usage(*_today_window()).result(timeout=TIMEOUT)) == {}

    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    tokens = [5, 17, 300, 42, 99]
    training.forward_backward([types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": types.TensorData(data=tokens[1:], dtype="int64", shape=[4])},
    )], "cross_entropy").result(timeout=TIMEOUT)
    sampler = service.create_sampling_client(base_model=MODEL_NAME).result(timeout=TIMEOUT)
    sample = sampler.sample(types.ModelInput.from_ints([5, 17, 300]), 1,
                            types.SamplingParams(max_tokens=4, temperature=0, stop=[])).result(timeout=TIMEOUT)
    saved = training.save_weights_for_sampler("usage").result(timeout=TIMEOUT)

    usage = admin.get_billing_usage(*_today_window()).result(timeout=TIMEOUT)
    assert _tokens(usage) == {"training": 4, "sampling_prefill": 3,
                              "sampling_sample": len(sample.sequences[0].tokens)}
    assert all(e.bucket_end - e.bucket_start == timedelta(days=1) for e in usage.data)

    storage = admin.get_current_checkpoint_storage_usage().result(timeout=TIMEOUT)
    assert storage.data[0].checkpoint_count == 1 and storage.data[0].size_bytes > 0
    info = tinker.RestClient(base_url=server.url, api_key=key).get_weights_info_by_tinker_path(saved.path)
    assert info.result(timeout=TIMEOUT) is not None

    # OpenAI-compatible requests are counted like any other sampling.
    oai = openai.OpenAI(base_url=f"{server.url}/oai/api/v1", api_key=key, max_retries=0, timeout=TIMEOUT)
    completion = oai.completions.create(model=MODEL_NAME, prompt=[5, 17], max_tokens=3, temperature=0)
    after = _tokens(admin.get_billing_usage(*_today_window()).result(timeout=TIMEOUT))
    assert after["sampling_prefill"] == 3 + 2
    assert after["sampling_sample"] == len(sample.sequences[0].tokens) + completion.usage.completion_tokens

    # Another tenant sees only its own figures.
    bob = tinker.AdminClient(base_url=server.url, api_key=server.keys["bob"])
    bob_storage = bob.get_current_checkpoint_storage_usage().result(timeout=TIMEOUT)
    assert all(item.user_name == "bob" for item in bob_storage.data)


def test_bad_usage_window_is_a_400(server: LiveServer) -> None:
    admin = tinker.AdminClient(base_url=server.url, api_key=server.keys["alice"])
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    for start, end in ((now, now - timedelta(hours=1)), (now - timedelta(days=20), now),
                       (now + timedelta(days=2), now + timedelta(days=3))):
        with pytest.raises(tinker.BadRequestError):
            admin.get_billing_usage(start, end).result(timeout=TIMEOUT)
