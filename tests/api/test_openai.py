"""The OpenAI-compatible API (/oai/api/v1) driven by the official ``openai`` client.

Completions and chat completions on the base model and on a trained sampler
checkpoint, streaming and not, logprobs, stop strings, n and seed; tenant
isolation (another tenant's tinker:// path is a 404) and OpenAI-shaped errors.
"""

from __future__ import annotations

import httpx
import openai
import pytest
import tinker
from tinker import types

from tests.api.helpers import datum
from tests.conftest import MODEL_NAME, LiveServer

TIMEOUT = 120


def _client(server: LiveServer, tenant: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/oai/api/v1", api_key=server.keys[tenant], timeout=TIMEOUT,
                         max_retries=0)


@pytest.fixture(scope="module")
def alice(server: LiveServer) -> openai.OpenAI:
    return _client(server, "alice")


@pytest.fixture(scope="module")
def bob(server: LiveServer) -> openai.OpenAI:
    return _client(server, "bob")


@pytest.fixture(scope="module")
def sampler_path(server: LiveServer) -> str:
    """A sampler checkpoint of alice's, trained for a few steps with the Tinker SDK."""
    service = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=TIMEOUT)
    tokens = [5, 17, 300, 42, 99, 7, 250, 13]
    for _ in range(2):
        training.forward_backward([datum(tokens[:-1], tokens[1:])], "cross_entropy").result(timeout=TIMEOUT)
        training.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=TIMEOUT)
    return training.save_weights_for_sampler("oai-test").result(timeout=TIMEOUT).path


def test_models_lists_base_models_and_own_sampler_checkpoints(alice: openai.OpenAI, bob: openai.OpenAI,
                                                              sampler_path: str) -> None:
    ids = [m.id for m in alice.models.list()]
    assert MODEL_NAME in ids and sampler_path in ids
    assert alice.models.retrieve(sampler_path).owned_by == "you"
    bob_ids = [m.id for m in bob.models.list()]
    assert MODEL_NAME in bob_ids and sampler_path not in bob_ids


def test_completion_greedy_matches_its_stream(alice: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL_NAME, prompt="the model learns", max_tokens=8, temperature=0)
    full = alice.completions.create(**kwargs)
    choice = full.choices[0]
    assert full.object == "text_completion" and choice.finish_reason in ("stop", "length")
    assert full.usage.completion_tokens >= 1 and full.usage.prompt_tokens >= 3
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    stream = alice.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completion_n_seed_logprobs_and_token_prompt(alice: openai.OpenAI) -> None:
    a = alice.completions.create(model=MODEL_NAME, prompt=[5, 17, 300], max_tokens=6, n=3, seed=7,
                                 temperature=1.0, top_p=0.9, logprobs=2)
    b = alice.completions.create(model=MODEL_NAME, prompt=[5, 17, 300], max_tokens=6, n=3, seed=7,
                                 temperature=1.0, top_p=0.9, logprobs=2)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # same seed, same samples
    lp = a.choices[0].logprobs
    assert lp is not None and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(len(row) <= 2 for row in lp.top_logprobs)
    assert "".join(lp.tokens) == a.choices[0].text or a.choices[0].finish_reason == "stop"


def test_stop_string_is_cut_from_the_text(alice: openai.OpenAI) -> None:
    free = alice.completions.create(model=MODEL_NAME, prompt="one two three", max_tokens=12, temperature=0)
    text = free.choices[0].text
    if len(text.strip()) < 2:
        pytest.skip("the random model produced too little text to pick a stop string from")
    stop = text.strip()[:2]
    cut = alice.completions.create(model=MODEL_NAME, prompt="one two three", max_tokens=12, temperature=0,
                                   stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.find(stop)]


def test_chat_on_a_sampler_checkpoint_streams_like_it_answers(alice: openai.OpenAI, sampler_path: str) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say something"}]
    full = alice.chat.completions.create(model=sampler_path, messages=messages, max_tokens=6, temperature=0,
                                         logprobs=True, top_logprobs=2)
    choice = full.choices[0]
    assert full.object == "chat.completion" and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.logprobs is not None and len(choice.logprobs.content) == full.usage.completion_tokens
    assert all(len(t.top_logprobs) <= 2 for t in choice.logprobs.content)
    deltas = list(alice.chat.completions.create(model=sampler_path, messages=messages, max_tokens=6,
                                                temperature=0, stream=True))
    assert deltas[0].choices[0].delta.role == "assistant"
    assert "".join(d.choices[0].delta.content or "" for d in deltas) == choice.message.content
    assert deltas[-1].choices[0].finish_reason == choice.finish_reason


def test_adapter_changes_the_answer_on_the_same_prompt(alice: openai.OpenAI, sampler_path: str) -> None:
    prompt = [5, 17, 300, 42]
    base = alice.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=4, temperature=0, logprobs=0)
    tuned = alice.completions.create(model=sampler_path, prompt=prompt, max_tokens=4, temperature=0, logprobs=0)
    assert base.choices[0].logprobs.token_logprobs != tuned.choices[0].logprobs.token_logprobs


def test_another_tenants_checkpoint_is_not_found(bob: openai.OpenAI, sampler_path: str) -> None:
    with pytest.raises(openai.NotFoundError):
        bob.completions.create(model=sampler_path, prompt="hi", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.create(model=sampler_path, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        bob.models.retrieve(sampler_path)


def test_bad_requests_get_openai_errors(server: LiveServer, alice: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        alice.completions.create(model="no/such-model", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        alice.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2, temperature=5)
    with pytest.raises(openai.BadRequestError):
        alice.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=100_000)  # past max_model_len
    with pytest.raises(openai.BadRequestError):
        alice.completions.create(model=MODEL_NAME, prompt=[10**9], max_tokens=2)  # not in the vocabulary
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/oai/api/v1", api_key="tml-wrong", max_retries=0).models.list()
    r = httpx.post(f"{server.url}/oai/api/v1/completions", content=b"{not json",
                   headers={"Authorization": f"Bearer {server.keys['alice']}"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_x_api_key_header_and_model_by_path(server: LiveServer, tiny_model_dir) -> None:
    r = httpx.post(f"{server.url}/oai/api/v1/completions", timeout=TIMEOUT,
                   headers={"X-API-Key": server.keys["bob"]},
                   json={"model": str(tiny_model_dir), "prompt": "hello", "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == str(tiny_model_dir) and len(r.json()["choices"]) == 1


QUOTA_SETUP = """
from sessions_app.actions import do_create_api_key, do_create_tenant
from sessions_app.models import Quota
tenant = do_create_tenant("oai-quota")
Quota.objects.create(tenant=tenant, max_sampling_sessions=1, sample_tokens_per_day=40)
print("KEY=" + do_create_api_key(tenant)[1])
"""


def test_quotas_apply_and_each_request_frees_its_sampling_session(server: LiveServer) -> None:
    key = server.manage("shell", "-c", QUOTA_SETUP).split("KEY=", 1)[1].strip()
    client = openai.OpenAI(base_url=f"{server.url}/oai/api/v1", api_key=key, timeout=TIMEOUT, max_retries=0)
    # One sampling session allowed: sequential requests each open and close their own.
    for _ in range(2):
        assert client.completions.create(model=MODEL_NAME, prompt=[5, 17], max_tokens=2, temperature=0).choices
    with pytest.raises(openai.PermissionDeniedError, match="token budget"):
        client.completions.create(model=MODEL_NAME, prompt=[5, 17], max_tokens=50)


def test_published_checkpoints_are_listed_and_usable_by_other_tenants(server: LiveServer, bob: openai.OpenAI) -> None:
    service = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    training = service.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    path = training.save_weights_for_sampler("oai-published").result(timeout=TIMEOUT).path
    assert path not in [m.id for m in bob.models.list()]
    tinker.RestClient(base_url=server.url, api_key=server.keys["alice"]).publish_checkpoint_from_tinker_path(
        path).result(timeout=TIMEOUT)
    listed = {m.id: m for m in bob.models.list()}
    assert listed[path].owned_by == "published"
    reply = bob.chat.completions.create(model=path, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.choices[0].message.role == "assistant"
