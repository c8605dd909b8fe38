"""A seeded fuzzer over every route of the URL conf, on SQLite and on PostgreSQL.

Hypothesis draws ``FUZZ_EXAMPLES`` requests per database (2,500 by default, so
5,000 in the default test command): a route of ``tuft_project.urls`` (API routes
most of the time, the admin and dashboard too) with its path parameters filled
by real ids or hostile text, a method, headers (the fuzz tenant's key, a wrong
one or none; content types; zstd; idempotency keys), a query string, and a body:
a *valid* request of that route with some fields replaced by hostile values
(huge and negative integers, long strings, NUL, unicode, wrong types, deep
nesting), a mutated protobuf ``ForwardBackwardRequest`` (hostile shapes,
dtypes, token bytes, seq ids), or random bytes. It asserts:

* no answer is a 5xx, and every API error is a JSON body with a ``detail``;
* no operation the fuzzer queued failed with category ``server``;
* the server process is alive, and a normal SDK flow (training and sampling:
  both lanes) still works afterwards.

Reproducing a failure: the run is deterministic (``derandomize=True``: the
seed comes from this test's source), so ``pytest tests/api/test_fuzz.py -k
sqlite`` (or ``-k postgresql``) replays the same requests against the same
code. The failure message lists each offending request (method, URL, headers,
body) ready to re-send with httpx against a server started as in
tests/api/conftest.py; the server log path is printed as well.
``FUZZ_EXAMPLES=10000`` runs a longer campaign, and ``FUZZ_SEED=<n>`` a different
(but again reproducible) sequence of requests.
"""

from __future__ import annotations

import json
import os
import re
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import tinker
import zstandard
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from tinker import types
from tinker.proto import tinker_public_pb2 as pb

from tests.api.conftest import DbServer
from tests.api.helpers import datum, post, proto_forward_backward, wait_future
from tests.conftest import MODEL_NAME

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2500"))
FUZZ_SEED = os.environ.get("FUZZ_SEED")  # unset: derandomized, the seed comes from the test's source


# -- the routes, from the URL conf itself -------------------------------------------------


@dataclass(frozen=True)
class Route:
    template: str  # e.g. "api/v1/sessions/<str:session_id>"
    methods: tuple[str, ...]  # the methods its view implements (empty: unknown)

    @property
    def params(self) -> list[str]:
        return re.findall(r"<(?:\w+:)?(\w+)>", self.template)


def url_conf_routes() -> list[Route]:
    from django.urls import URLResolver, get_resolver

    def walk(patterns: list[Any], prefix: str) -> list[Route]:
        found = []
        for p in patterns:
            if isinstance(p, URLResolver):
                found += walk(p.url_patterns, prefix + str(p.pattern))
                continue
            template = prefix + str(p.pattern)
            # Regex routes (django-rq's): make them literal paths.
            template = re.sub(r"\(\?P<(\w+)>[^)]*\)\??", r"<str:\1>", template)
            template = template.replace("^", "").replace("$", "").replace("/?", "/")
            view = getattr(p.callback, "view_class", None)
            methods = tuple(m.upper() for m in ("get", "post", "put", "delete", "patch")
                            if view is not None and hasattr(view, m))
            found.append(Route(template, methods))
        return found

    return walk(get_resolver().url_patterns, "")


ROUTES = url_conf_routes()
API_ROUTES = [r for r in ROUTES if r.template.startswith("api/v1/")]
OTHER_ROUTES = [r for r in ROUTES if not r.template.startswith("api/v1/")]


# -- hostile values ----------------------------------------------------------------------

EDGE_INTS = [0, 1, -1, 2, 255, 256, 257, 2**15, 2**31 - 1, 2**31, -(2**31) - 1, 2**32, 2**53, 2**63 - 1, 2**63,
             2**64, -(2**63) - 1, 10**30, 2**31 * 7]
EDGE_FLOATS = [0.0, -0.0, 1e-45, 1e-300, 0.5, 1.0, 1.5, -1.0, 1e30, 1e300, -1e300]
EDGE_TEXT = ["", "\x00", "a\x00b", "..", "../..", "%00", "%2e%2e", "tinker://", "tinker://x/weights/y",
             "tinker://../weights/..", "é" * 3, "\U0001F600", "\ud7ff", " ", "/", "\\", "null", "true", "{}",
             "x" * 5000, "auto-", "weights", "sampler_weights", "\u202e", "\r\n", "'; DROP TABLE x; --"]
text = st.one_of(st.sampled_from(EDGE_TEXT), st.text(max_size=40), st.text(string.printable, max_size=300))
scalar = st.one_of(st.none(), st.booleans(), st.sampled_from(EDGE_INTS), st.integers(-5, 300),
                   st.sampled_from(EDGE_FLOATS), st.floats(allow_nan=False, allow_infinity=False), text)
json_value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(text, inner, max_size=4)), max_leaves=12)
# Written as raw JSON text: values the client library itself would refuse to encode.
RAW_JSON_VALUES = ["1e999", "-1e999", "NaN", "Infinity", "1" * 5000, '"\\ud800"', "[" * 3000 + "]" * 3000,
                   "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]", '{"a": {"b": {"c": {"d": null}}}}']


@dataclass
class Fixtures:
    """Real objects of the fuzz tenant, so mutated requests get past the lookups."""

    session: str
    run: str
    sampler: str
    checkpoint: str  # tinker path
    seq: int = 100  # seq ids the fuzzer hands out for "valid" ordered operations
    request_ids: list[str] = field(default_factory=list)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


def valid_bodies(fx: Fixtures) -> dict[str, dict[str, Any]]:
    """One valid JSON body per API route that takes one (hostile values are swapped in later)."""
    prompt = {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]}
    return {
        "create_session": {"tags": ["t"], "user_metadata": {"k": "v"}, "sdk_version": "0.38.0", "display_name": "d"},
        "session_heartbeat": {"session_id": fx.session},
        "telemetry": {"events": []},
        "client/config": {"sdk_version": "0.38.0"},
        "create_model": {"session_id": fx.session, "model_seq_id": 1, "base_model": MODEL_NAME,
                         "lora_config": {"rank": 2, "seed": 1, "train_mlp": True, "train_attn": True,
                                         "train_unembed": False}, "user_metadata": {"k": "v"}},
        "get_info": {"model_id": fx.run},
        "optim_step": {"model_id": fx.run, "seq_id": 1,
                       "adam_params": {"learning_rate": 1e-4, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12,
                                       "weight_decay": 0.0, "grad_clip_norm": 0.0}},
        "save_weights": {"model_id": fx.run, "path": "fz", "seq_id": 1, "ttl_seconds": 60, "overwrite": True},
        "save_weights_for_sampler": {"model_id": fx.run, "path": "fz", "seq_id": 1, "sampling_session_seq_id": 3},
        "save_weights_external": {"model_id": fx.run, "path": "fz", "seq_id": 1},
        "load_weights": {"model_id": fx.run, "path": fx.checkpoint, "seq_id": 1, "optimizer": True},
        "retrieve_future": {"request_id": "req-0", "allow_metadata_only": False},
        "weights_info": {"tinker_path": fx.checkpoint},
        "create_sampling_session": {"session_id": fx.session, "sampling_session_seq_id": 1, "base_model": MODEL_NAME},
        "asample": {"sampling_session_id": fx.sampler, "seq_id": 1, "num_samples": 1, "prompt": prompt,
                    "sampling_params": {"max_tokens": 2, "temperature": 0.5, "top_k": -1, "top_p": 1.0, "seed": 1,
                                        "stop": [5]},
                    "prompt_logprobs": True, "topk_prompt_logprobs": 2, "topk_sample_logprobs": 1},
        "sessions/<str:session_id>/finish": {"reason": {"type": "success"}, "detail": "x"},
        "training_runs/<str:run_id>/checkpoints/<path:checkpoint_id>/ttl": {"ttl_seconds": 60},
    }


ORDERED = {"optim_step", "save_weights", "save_weights_for_sampler", "save_weights_external", "load_weights"}


@st.composite
def mutated_json(draw: st.DrawFn, valid: dict[str, Any], route: str, fx: Fixtures) -> bytes:
    """``valid`` with fields replaced, removed, nested or added; sometimes raw hostile JSON text."""
    body: dict[str, Any] = json.loads(json.dumps(valid))
    if route in ORDERED and "seq_id" in body:
        body["seq_id"] = fx.next_seq()  # so a valid one takes a fresh place in the run's order
    for _ in range(draw(st.integers(0, 3))):
        target: Any = body
        path = list(body)
        if not path:
            break
        key = draw(st.sampled_from(path))
        if isinstance(body[key], dict) and body[key] and draw(st.booleans()):
            target, key = body[key], draw(st.sampled_from(list(body[key])))
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "raw"]))
        if action == "delete":
            target.pop(key, None)
        elif action == "replace":
            target[key] = draw(json_value)
        else:
            target[key] = "__RAW__"
    if draw(st.integers(0, 9)) == 0:
        body[draw(text)] = draw(json_value)
    raw = json.dumps(body, allow_nan=False)
    if "__RAW__" in raw:
        raw = raw.replace('"__RAW__"', draw(st.sampled_from(RAW_JSON_VALUES)), 1)
    return raw.encode()


def hostile_tensor(draw: st.DrawFn) -> pb.Tensor:
    tensor = pb.Tensor(dtype=draw(st.sampled_from([0, 1, 2, 3, 4, 99, -1])))
    int64s = [i for i in EDGE_INTS if -(2**63) <= i < 2**63] + [3, 4, 64]  # what the int64 field can hold
    tensor.shape.extend(draw(st.lists(st.sampled_from(int64s), max_size=3)))
    if draw(st.booleans()):
        tensor.dense = draw(st.binary(max_size=64))
    else:
        tensor.sparse_csr.values = draw(st.binary(max_size=32))
        tensor.sparse_csr.crow_indices = np.array(draw(st.lists(st.integers(-3, 2**40), max_size=4)),
                                                  dtype=np.int64).tobytes()
        tensor.sparse_csr.col_indices = np.array(draw(st.lists(st.integers(-3, 2**40), max_size=4)),
                                                 dtype=np.int64).tobytes()
    return tensor


@st.composite
def mutated_protobuf(draw: st.DrawFn, fx: Fixtures) -> bytes:
    seq = fx.next_seq()
    msg = pb.ForwardBackwardRequest.FromString(proto_forward_backward(fx.run, seq, [datum([1, 2, 3], [2, 3, 4])]))
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["seq", "model", "loss", "config", "tokens", "tensor", "data", "forward"]))
        if what == "seq":
            msg.seq_id = draw(st.sampled_from([0, -1, 1, 2**31 - 1, -(2**31)]))
        elif what == "model":
            msg.model_id = draw(text)
        elif what == "loss":
            msg.loss_fn = draw(st.sampled_from(["", "custom", "ppo", "importance_sampling", "cispo", "dro",
                                                "\x00", "x" * 300]))
        elif what == "config":
            msg.loss_fn_config[draw(text)] = draw(st.sampled_from(EDGE_FLOATS + [float("inf"), float("nan")]))
        elif not msg.data:  # an earlier mutation removed the datum the next ones would change
            continue
        elif what == "tokens":
            msg.data[0].model_input[0].encoded_text.tokens = draw(st.binary(max_size=41))
        elif what == "tensor":
            msg.data[0].loss_fn_inputs[draw(st.sampled_from(["target_tokens", "weights", "advantages", "x"]))] \
                .CopyFrom(hostile_tensor(draw))
        elif what == "data":
            del msg.data[draw(st.integers(0, 1)):]
        else:
            msg.forward_only = True
    return msg.SerializeToString()


@dataclass(frozen=True)
class FuzzRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def __str__(self) -> str:
        return f"{self.method} {self.url} headers={self.headers} body={self.body[:600]!r}"


def fill(template: str, draw: st.DrawFn, fx: Fixtures) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        real = {"session_id": fx.session, "run_id": fx.run, "sampler_id": fx.sampler,
                "checkpoint_id": fx.checkpoint.split("/", 3)[-1] if fx.checkpoint.count("/") >= 3 else "weights/x"}
        if name in real and "finish" not in template and draw(st.integers(0, 2)) > 0:
            return quote(real[name], safe="/")
        return quote(draw(text), safe=draw(st.sampled_from(["", "/"]))) or "x"

    return re.sub(r"<(?:\w+:)?(\w+)>", one, template)


@st.composite
def fuzz_requests(draw: st.DrawFn, base_url: str, key: str, fx: Fixtures) -> FuzzRequest:
    route = draw(st.sampled_from(API_ROUTES)) if draw(st.integers(0, 9)) < 9 else draw(st.sampled_from(OTHER_ROUTES))
    name = route.template.removeprefix("api/v1/")
    methods = route.methods or ("GET", "POST")
    method = draw(st.sampled_from(methods)) if draw(st.integers(0, 9)) < 9 else \
        draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    path = fill(route.template, draw, fx)
    query = ""
    if draw(st.integers(0, 3)) == 0:
        params = draw(st.dictionaries(st.sampled_from(["limit", "offset", "access_scope", "x", "\x00"]),
                                      st.one_of(text, st.sampled_from(EDGE_INTS).map(str)), max_size=3))
        query = "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in params.items())
    headers = {"Content-Type": "application/json"}
    key_choice = draw(st.integers(0, 19))
    if key_choice < 18:
        headers["X-API-Key"] = key
    elif key_choice == 18:
        headers["X-API-Key"] = draw(st.text(string.printable.strip(), max_size=60))
    if draw(st.integers(0, 9)) == 0:
        headers["X-Idempotency-Key"] = draw(st.text(string.ascii_letters, max_size=150))

    valid = valid_bodies(fx)
    if name == "forward_backward" and draw(st.integers(0, 4)) > 0:
        body = draw(mutated_protobuf(fx))
        headers["Content-Type"] = "application/x-protobuf"
    elif name in valid and draw(st.integers(0, 4)) > 0:
        body = draw(mutated_json(valid[name], name, fx))
    else:
        body = draw(st.one_of(st.binary(max_size=200), json_value.map(lambda v: json.dumps(v).encode())))
    if draw(st.integers(0, 14)) == 0:
        headers["Content-Type"] = draw(st.sampled_from([
            "application/x-protobuf", "text/plain", "application/xml", "multipart/form-data", "",
            "application/json; charset=latin-1"]))
    if draw(st.integers(0, 19)) == 0:
        headers["Content-Encoding"] = "zstd"
        if draw(st.booleans()):
            body = zstandard.ZstdCompressor().compress(body)
    if method in ("GET", "HEAD", "OPTIONS") and draw(st.booleans()):
        body = b""
    return FuzzRequest(method, f"{base_url}/{path}{query}", headers, body)


# -- the test --------------------------------------------------------------------------


def make_fixtures(srv: DbServer, key: str) -> Fixtures:
    s = srv.server
    session = post(s, "create_session", key, {"tags": [], "sdk_version": "0.38.0", "user_metadata": {}}).json()
    r = post(s, "create_model", key, {"session_id": session["session_id"], "model_seq_id": 0,
                                      "base_model": MODEL_NAME, "lora_config": {"rank": 2}})
    assert wait_future(s, key, r.json()["request_id"]).status_code == 200
    run = r.json()["model_id"]
    r = post(s, "save_weights", key, {"model_id": run, "path": "base", "seq_id": 1})
    checkpoint = wait_future(s, key, r.json()["request_id"]).json()["path"]
    sampler = post(s, "create_sampling_session", key, {"session_id": session["session_id"],
                                                       "sampling_session_seq_id": 0, "base_model": MODEL_NAME})
    return Fixtures(session["session_id"], run, sampler.json()["sampling_session_id"], checkpoint)


def server_category_failures(srv: DbServer) -> list[str]:
    out = srv.server.manage("shell", "-c", (
        "from training_app.models import Operation\n"
        "for op in Operation.objects.filter(tenant__name='fuzz', error_category='server'):\n"
        "    print('OP', op.request_id, op.kind, repr(op.error)[:300])\n"))
    return [line for line in out.splitlines() if line.startswith("OP ")]


# Well over the suite's 300 s default: a loaded 2-core machine, a server start and thousands of requests.
@pytest.mark.timeout(max(900, FUZZ_EXAMPLES // 4))
def test_fuzz_every_route(db_server: DbServer) -> None:
    srv, key = db_server.server, db_server.server.keys["fuzz"]
    fx = make_fixtures(db_server, key)
    failures: list[str] = []
    sent = 0
    statuses: Counter[int] = Counter()
    client = httpx.Client(timeout=60)  # keep-alive: one connection for thousands of requests

    @settings(max_examples=FUZZ_EXAMPLES, derandomize=FUZZ_SEED is None, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        nonlocal sent
        req = data.draw(fuzz_requests(srv.url, key, fx))
        try:
            r = client.request(req.method, req.url, headers=req.headers, content=req.body)
        except httpx.HTTPError as exc:
            failures.append(f"{type(exc).__name__}: {exc}: {req}")
            return
        sent += 1
        statuses[r.status_code] += 1
        if r.status_code >= 500:
            failures.append(f"{r.status_code}: {r.text[:200]!r}: {req}")
        elif ("/api/v1/" in req.url and r.status_code >= 400 and req.method != "HEAD"
              # Twisted (under daphne) answers a malformed multipart body with a bare 400
              # before the request reaches Django: still a 4xx, but not ours to word.
              and not req.headers.get("Content-Type", "").startswith("multipart/")):
            try:
                body = r.json()
                # The Tinker API's {"detail": ...}; the OpenAI-compatible routes answer as the
                # OpenAI API does, {"error": {"message": ...}} (docs/openai.md).
                ok = bool(body.get("detail")) or ("/oai/" in req.url and bool((body.get("error") or {}).get("message")))
            except (ValueError, AttributeError):
                ok = False
            if not ok:
                failures.append(f"{r.status_code} without a JSON detail: {r.text[:200]!r}: {req}")

    if FUZZ_SEED is not None:
        run = seed(int(FUZZ_SEED))(run)
    started = time.monotonic()
    try:
        run()
    finally:
        client.close()
    elapsed = time.monotonic() - started
    print(f"fuzz[{db_server.database}]: {sent} requests in {elapsed:.0f} s, {len(failures)} failures, "
          f"statuses {dict(sorted(statuses.items()))}")
    assert not failures, (f"{len(failures)} of {sent} fuzz requests failed (server log: {srv.log_path}):\n"
                          + "\n".join(failures[:25]))
    assert sent >= FUZZ_EXAMPLES * 0.95
    assert srv.process.poll() is None, "the server died"

    # Both lanes are alive and serve a normal SDK flow.
    client_sdk = tinker.ServiceClient(base_url=srv.url, api_key=db_server.server.keys["bob"])
    training = client_sdk.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=120)
    out = training.forward_backward([datum([1, 2, 3, 4], [2, 3, 4, 5])], "cross_entropy").result(timeout=300)
    assert out.metrics["loss:sum"] > 0
    training.optim_step(types.AdamParams(learning_rate=1e-3)).result(timeout=300)
    sampling = client_sdk.create_sampling_client(base_model=MODEL_NAME).result(timeout=120)
    sample = sampling.sample(prompt=types.ModelInput.from_ints([1, 2, 3]), num_samples=1,
                             sampling_params=types.SamplingParams(max_tokens=2, temperature=0.0)).result(timeout=300)
    assert sample.sequences

    # Nothing the fuzzer queued failed as the server's fault.
    bad = server_category_failures(db_server)
    assert not bad, "operations failed with category server:\n" + "\n".join(bad[:25])
