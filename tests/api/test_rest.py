"""Issue #3 items 6 and 8: checkpoint and run management through the SDK's RestClient, and sessions.

Runs (pagination, lookup by id and by tinker path), checkpoints (per run and
per tenant, newest first), delete, publish/unpublish across tenants, TTL
(expired checkpoints vanish with their files), weights_info, sessions,
samplers, downloads through signed expiring URLs (the SDK's
external_weights_urls, ``tinker checkpoint download``, and a .tar.gz archive),
and sessions that go silent being closed with their adapters released.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import tinker
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file
from tinker import types

from tests.api.helpers import HTTP
from tests.conftest import MODEL_NAME, LiveServer, start_server, write_models_yaml

TIMEOUT = 120


def _datum() -> types.Datum:
    tokens = [3, 40, 41, 42, 43]
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens),
        loss_fn_inputs={"target_tokens": types.TensorData(data=tokens[1:] + [44], dtype="int64", shape=[5])},
    )


def _train_step(tc: tinker.TrainingClient) -> None:
    tc.forward_backward([_datum()], "cross_entropy").result(timeout=TIMEOUT)
    tc.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=TIMEOUT)


def _files_of(server: LiveServer, tinker_path: str) -> list[Path]:
    run_id, kind, name = tinker_path.removeprefix("tinker://").split("/")
    return list((server.home / "checkpoints").glob(f"*/{run_id}/{kind}/{name}"))


@pytest.fixture(scope="module")
def dave(server: LiveServer) -> tuple[tinker.ServiceClient, tinker.RestClient]:
    """A tenant of its own, so listings hold exactly what these tests create."""
    key = server.create_tenant("rest-dave")
    return (tinker.ServiceClient(base_url=server.url, api_key=key), tinker.RestClient(base_url=server.url, api_key=key))


@pytest.fixture(scope="module")
def bob_rest(server: LiveServer) -> tinker.RestClient:
    return tinker.RestClient(base_url=server.url, api_key=server.keys["bob"])


def test_training_runs_and_checkpoints_listing(
    dave: tuple[tinker.ServiceClient, tinker.RestClient], bob_rest: tinker.RestClient, server: LiveServer
) -> None:
    sc, rest = dave
    runs = [sc.create_lora_training_client(base_model=MODEL_NAME, rank=2 + i,
                                           user_metadata={"purpose": f"run-{i}"}).result(timeout=TIMEOUT)
            for i in range(3)]
    tc = runs[0]
    first = tc.save_state("first").result(timeout=TIMEOUT).path
    sampler = tc.save_weights_for_sampler("second", user_metadata={"note": "hi"}).result(timeout=TIMEOUT).path
    third = tc.save_state("third").result(timeout=TIMEOUT).path

    page1 = rest.list_training_runs(limit=2, offset=0).result(timeout=TIMEOUT)
    page2 = rest.list_training_runs(limit=2, offset=2).result(timeout=TIMEOUT)
    assert page1.cursor is not None and page1.cursor.total_count == 3
    listed = [r.training_run_id for r in page1.training_runs + page2.training_runs]
    assert listed == [r.model_id for r in reversed(runs)], "newest first, pages in order"

    run = rest.get_training_run(tc.model_id).result(timeout=TIMEOUT)
    assert (run.base_model, run.lora_rank, run.model_owner, run.is_lora) == (MODEL_NAME, 2, "rest-dave", True)
    assert run.user_metadata == {"purpose": "run-0"}
    assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path == third
    assert run.last_sampler_checkpoint is not None and run.last_sampler_checkpoint.tinker_path == sampler
    assert rest.get_training_run_by_tinker_path(sampler).result(timeout=TIMEOUT).training_run_id == tc.model_id
    with pytest.raises(tinker.NotFoundError):
        bob_rest.get_training_run(tc.model_id).result(timeout=TIMEOUT)

    ckpts = rest.list_checkpoints(tc.model_id).result(timeout=TIMEOUT).checkpoints
    assert [c.tinker_path for c in ckpts] == [third, sampler, first]
    assert [c.checkpoint_type for c in ckpts] == ["training", "sampler", "training"]
    assert ckpts[1].checkpoint_id == "sampler_weights/second" and ckpts[1].user_metadata == {"note": "hi"}
    assert all(c.size_bytes and c.size_bytes > 0 and not c.public for c in ckpts)
    other = runs[1].save_state("other-run").result(timeout=TIMEOUT).path
    mine = rest.list_user_checkpoints(limit=3).result(timeout=TIMEOUT)
    assert [c.tinker_path for c in mine.checkpoints] == [other, third, sampler]
    assert mine.cursor is not None and mine.cursor.total_count == 4

    # Delete: the row and the files go; another tenant cannot even see it.
    with pytest.raises(tinker.NotFoundError):
        bob_rest.delete_checkpoint_from_tinker_path(first).result(timeout=TIMEOUT)
    assert _files_of(server, first)
    rest.delete_checkpoint_from_tinker_path(first).result(timeout=TIMEOUT)
    assert first not in [c.tinker_path for c in rest.list_checkpoints(tc.model_id).result(timeout=TIMEOUT).checkpoints]
    assert not _files_of(server, first)
    with pytest.raises(tinker.NotFoundError):
        sc.create_training_client_from_state(first).result(timeout=TIMEOUT)

    info = rest.get_weights_info_by_tinker_path(third).result(timeout=TIMEOUT)
    assert (info.base_model, info.is_lora, info.lora_rank) == (MODEL_NAME, True, 2)
    assert (info.train_attn, info.train_mlp, info.train_unembed) == (True, True, True)

    # Sessions and samplers.
    session_id = sc.holder.get_session_id()
    assert session_id in rest.list_sessions(limit=50).result(timeout=TIMEOUT).sessions
    sampling = sc.create_sampling_client(model_path=sampler).result(timeout=TIMEOUT)
    session = rest.get_session(session_id).result(timeout=TIMEOUT)
    assert session.training_run_ids == [r.model_id for r in runs]
    assert sampling._sampling_session_id in session.sampler_ids
    got = rest.get_sampler(sampling._sampling_session_id).result(timeout=TIMEOUT)
    assert (got.base_model, got.model_path) == (MODEL_NAME, sampler)
    with pytest.raises(tinker.NotFoundError):
        bob_rest.get_session(session_id).result(timeout=TIMEOUT)


def test_published_checkpoints_are_readable_but_not_changeable_by_others(
    dave: tuple[tinker.ServiceClient, tinker.RestClient], server: LiveServer
) -> None:
    sc, rest = dave
    tc = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    _train_step(tc)
    state = tc.save_state("shared-state").result(timeout=TIMEOUT).path
    sampler = tc.save_weights_for_sampler("shared-sampler").result(timeout=TIMEOUT).path
    bob = tinker.ServiceClient(base_url=server.url, api_key=server.keys["bob"])
    bob_rest = tinker.RestClient(base_url=server.url, api_key=server.keys["bob"])
    with pytest.raises(tinker.NotFoundError):
        bob.create_sampling_client(model_path=sampler).result(timeout=TIMEOUT)

    rest.publish_checkpoint_from_tinker_path(sampler).result(timeout=TIMEOUT)
    rest.publish_checkpoint_from_tinker_path(state).result(timeout=TIMEOUT)
    assert all(c.public for c in rest.list_checkpoints(tc.model_id).result(timeout=TIMEOUT).checkpoints)
    # Bob samples it and trains from it...
    mine = sc.create_sampling_client(model_path=sampler).result(timeout=TIMEOUT)
    theirs = bob.create_sampling_client(model_path=sampler).result(timeout=TIMEOUT)
    greedy = types.SamplingParams(max_tokens=5, temperature=0, stop=[])
    prompt = types.ModelInput.from_ints([3, 40, 41])
    assert (theirs.sample(prompt, 1, greedy).result(timeout=TIMEOUT).sequences[0].tokens
            == mine.sample(prompt, 1, greedy).result(timeout=TIMEOUT).sequences[0].tokens)
    fork = bob.create_training_client_from_state_with_optimizer(state).result(timeout=TIMEOUT)
    _train_step(fork)
    assert fork.save_state("bobs-fork").result(timeout=TIMEOUT).path.startswith(f"tinker://{fork.model_id}/")
    # ...and sees the run as accessible (not owned), with only its published checkpoints.
    assert bob_rest.get_training_run(tc.model_id, access_scope="accessible").result(timeout=TIMEOUT).model_owner == "rest-dave"
    accessible = bob_rest.list_training_runs(limit=100, access_scope="accessible").result(timeout=TIMEOUT)
    assert tc.model_id in [r.training_run_id for r in accessible.training_runs]
    owned = bob_rest.list_training_runs(limit=100).result(timeout=TIMEOUT)
    assert tc.model_id not in [r.training_run_id for r in owned.training_runs]
    assert bob_rest.get_weights_info_by_tinker_path(state).result(timeout=TIMEOUT).lora_rank == 2
    # But he can neither delete, unpublish nor re-time it, and the owner cannot delete it while published.
    for change in (bob_rest.delete_checkpoint_from_tinker_path(sampler),
                   bob_rest.unpublish_checkpoint_from_tinker_path(sampler),
                   bob_rest.set_checkpoint_ttl_from_tinker_path(sampler, 3600)):
        with pytest.raises(tinker.NotFoundError):
            change.result(timeout=TIMEOUT)
    with pytest.raises(tinker.BadRequestError, match="published"):
        rest.delete_checkpoint_from_tinker_path(sampler).result(timeout=TIMEOUT)
    assert _files_of(server, sampler)

    rest.unpublish_checkpoint_from_tinker_path(sampler).result(timeout=TIMEOUT)
    with pytest.raises(tinker.NotFoundError):
        bob.create_sampling_client(model_path=sampler).result(timeout=TIMEOUT)
    rest.delete_checkpoint_from_tinker_path(sampler).result(timeout=TIMEOUT)
    assert not _files_of(server, sampler)


def test_ttl_expiry_removes_checkpoints_and_files(
    dave: tuple[tinker.ServiceClient, tinker.RestClient], server: LiveServer
) -> None:
    sc, rest = dave
    tc = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    short = tc.save_state("short-lived", ttl_seconds=2).result(timeout=TIMEOUT).path
    kept = tc.save_weights_for_sampler("kept").result(timeout=TIMEOUT).path
    later = tc.save_state("later").result(timeout=TIMEOUT).path
    listed = rest.list_checkpoints(tc.model_id).result(timeout=TIMEOUT).checkpoints
    by_path = {c.tinker_path: c for c in listed}
    assert by_path[short].expires_at is not None and by_path[kept].expires_at is None
    rest.set_checkpoint_ttl_from_tinker_path(later, 1).result(timeout=TIMEOUT)
    rest.set_checkpoint_ttl_from_tinker_path(kept, 1).result(timeout=TIMEOUT)
    rest.set_checkpoint_ttl_from_tinker_path(kept, None).result(timeout=TIMEOUT)  # None: never expires again
    with pytest.raises(tinker.BadRequestError, match="ttl_seconds"):
        rest.set_checkpoint_ttl_from_tinker_path(kept, 0).result(timeout=TIMEOUT)
    assert _files_of(server, short) and _files_of(server, later)

    time.sleep(2.5)
    remaining = [c.tinker_path for c in rest.list_checkpoints(tc.model_id).result(timeout=TIMEOUT).checkpoints]
    assert remaining == [kept]
    assert not _files_of(server, short) and not _files_of(server, later), "files go with the checkpoint"
    assert _files_of(server, kept)
    with pytest.raises(tinker.NotFoundError):
        rest.get_weights_info_by_tinker_path(short).result(timeout=TIMEOUT)
    with pytest.raises(tinker.NotFoundError):
        sc.create_training_client_from_state(later).result(timeout=TIMEOUT)


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_downloads_through_signed_expiring_urls(
    dave: tuple[tinker.ServiceClient, tinker.RestClient], server: LiveServer, tmp_path: Path
) -> None:
    sc, rest = dave
    tc = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    _train_step(tc)
    sampler = tc.save_weights_for_sampler("for-download").result(timeout=TIMEOUT).path
    state = tc.save_state("state-for-download").result(timeout=TIMEOUT).path
    reference = load_file(str(_files_of(server, sampler)[0] / "adapter_model.safetensors"))

    # SDK 0.38: save_weights_external + get_external_weights_urls, one signed URL per file.
    exported = tc.save_weights_external("export").result(timeout=TIMEOUT).path
    assert exported == f"tinker://{tc.model_id}/external_weights/export"
    urls = rest.get_external_weights_urls(exported).result(timeout=TIMEOUT)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(urls.urls)
    assert urls.expires.timestamp() > time.time() + 60
    weights = load_safetensors(_fetch(urls.urls["adapter_model.safetensors"]))  # no API key needed
    assert weights.keys() == reference.keys()
    assert all(bool((weights[k] == reference[k]).all()) for k in weights)
    listed = rest.list_checkpoints(tc.model_id).result(timeout=TIMEOUT).checkpoints
    assert [c.checkpoint_type for c in listed if c.tinker_path == exported] == ["external"]

    # A tampered token is refused like an unknown one.
    url = urls.urls["adapter_config.json"]
    with pytest.raises(urllib.error.HTTPError) as err:
        _fetch(url[:-3] + ("aaa" if not url.endswith("aaa") else "bbb"))
    assert err.value.code == 404

    # Older SDKs' get_checkpoint_archive_url: a 302 to a signed .tar.gz of the whole checkpoint.
    run_id, kind, name = state.removeprefix("tinker://").split("/")
    redirect = httpx.get(f"{server.url}/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/archive",
                         headers={"X-API-Key": server.keys["rest-dave"], "Accept": "application/gzip"},
                         follow_redirects=False, timeout=30)
    assert redirect.status_code == 302 and redirect.headers["Expires"].endswith("GMT")
    with tarfile.open(fileobj=io.BytesIO(_fetch(redirect.headers["Location"])), mode="r:gz") as tar:
        names = set(tar.getnames())
        assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt"} <= names
        archived = load_safetensors(tar.extractfile("adapter_model.safetensors").read())  # type: ignore[union-attr]
    assert all(bool((archived[k] == reference[k]).all()) for k in reference)

    # `tinker checkpoint download` of a training checkpoint: the CLI exports it through a
    # training run restored from the state, downloads every file and deletes the export.
    env = {**os.environ, "TINKER_BASE_URL": server.url, "TINKER_API_KEY": server.keys["rest-dave"],
           "TINKER_TELEMETRY": "0"}
    cli = subprocess.run([sys.executable, "-m", "tinker.cli", "checkpoint", "download", state,
                          "--output", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    target = tmp_path / state.removeprefix("tinker://").replace("/", "_")
    cli_weights = load_file(str(target / "adapter_model.safetensors"))
    assert all(bool((cli_weights[k] == reference[k]).all()) for k in reference)
    leftovers = [c.checkpoint_id for c in rest.list_user_checkpoints(limit=100).result(timeout=TIMEOUT).checkpoints]
    assert "external_weights/download" not in leftovers, "the CLI's temporary export was deleted"

    # Deleting a checkpoint revokes its links.
    rest.delete_checkpoint_from_tinker_path(exported).result(timeout=TIMEOUT)
    with pytest.raises(urllib.error.HTTPError) as err:
        _fetch(urls.urls["adapter_model.safetensors"])
    assert err.value.code == 404


# -- sessions: heartbeats and expiry (a server with short timers) -----------------

# The test keeps sessions alive with its own heartbeats (the endpoint the SDK calls)
# from the moment they exist, so the timeout never has to cover a cold model load or
# a slow request; it is long enough that a loaded machine cannot miss it by accident.
SESSION_TIMEOUT_S = 15


@pytest.fixture(scope="module")
def short_timers(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("tuft-timers")
    srv = start_server(home, write_models_yaml(home / "models.yaml", tiny_model_dir), extra_env={
        "TUFT_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
        "TUFT_DOWNLOAD_URL_TTL_S": "2",
    })
    try:
        srv.create_tenant("erin")
        yield srv
    finally:
        srv.stop()


def _raw(srv: LiveServer, path: str, body: dict) -> httpx.Response:
    return HTTP.post(f"{srv.url}/api/v1/{path}", json=body, headers={"X-API-Key": srv.keys["erin"]}, timeout=60)


def _raw_result(srv: LiveServer, request_id: str) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        body = _raw(srv, "retrieve_future", {"request_id": request_id, "allow_metadata_only": False}).json()
        if body.get("type") != "try_again":
            return body
    raise AssertionError(f"future {request_id} did not finish")


class Heartbeats:
    """Heartbeats for some sessions every 0.5 s, from a thread, until stopped."""

    def __init__(self, srv: LiveServer) -> None:
        self.srv, self.sessions, self.failures = srv, set[str](), list[str]()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.wait(0.5):
            for session in list(self.sessions):
                r = _raw(self.srv, "session_heartbeat", {"session_id": session, "type": "session_heartbeat"})
                if r.status_code != 200:
                    self.failures.append(f"{session}: {r.status_code}")

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=60)


def _raw_session_with_run(srv: LiveServer, heartbeats: Heartbeats) -> tuple[str, str]:
    session = _raw(srv, "create_session", {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0",
                                           "type": "create_session"}).json()["session_id"]
    heartbeats.sessions.add(session)
    created = _raw(srv, "create_model", {
        "session_id": session, "model_seq_id": 0, "base_model": MODEL_NAME, "type": "create_model",
        "lora_config": {"rank": 2, "train_unembed": True, "train_mlp": True, "train_attn": True},
    }).json()
    return session, _raw_result(srv, created["request_id"])["model_id"]


def _is_open(srv: LiveServer, session: str) -> bool:
    """Probe with an idempotent call that needs an open session but is not a heartbeat."""
    probe = {"session_id": session, "sampling_session_seq_id": 0, "base_model": MODEL_NAME,
             "type": "create_sampling_session"}
    status = _raw(srv, "create_sampling_session", probe).status_code
    assert status in (200, 410), status
    return status == 200


def test_silent_sessions_expire_and_release_their_adapters(short_timers: LiveServer) -> None:
    srv = short_timers
    heartbeats = Heartbeats(srv)
    try:
        _expire_silent_sessions(srv, heartbeats)
    finally:
        heartbeats.stop()
    assert not heartbeats.failures, "the heartbeating session must stay open"


def _expire_silent_sessions(srv: LiveServer, heartbeats: Heartbeats) -> None:
    silent, silent_run = _raw_session_with_run(srv, heartbeats)
    saved = _raw(srv, "save_weights", {"model_id": silent_run, "path": "kept", "seq_id": 1, "overwrite": False,
                                       "type": "save_weights"}).json()
    kept_path = _raw_result(srv, saved["request_id"])["path"]
    # An unnamed sampler save (what save_weights_and_get_sampling_client sends) is ephemeral.
    unnamed = _raw(srv, "save_weights_for_sampler", {"model_id": silent_run, "sampling_session_seq_id": 1,
                                                     "kind": "snapshot", "seq_id": 2,
                                                     "type": "save_weights_for_sampler"}).json()
    ephemeral_path = _raw_result(srv, unnamed["request_id"])["path"]
    assert _files_of(srv, ephemeral_path)
    alive, alive_run = _raw_session_with_run(srv, heartbeats)
    # Signed download links expire too (TUFT_DOWNLOAD_URL_TTL_S=2 here).
    exported = _raw(srv, "save_weights_external", {"model_id": alive_run, "path": "soon-stale", "seq_id": 1,
                                                    "type": "save_weights_external"}).json()
    rest = tinker.RestClient(base_url=srv.url, api_key=srv.keys["erin"])
    url = rest.get_external_weights_urls(_raw_result(srv, exported["request_id"])["path"]).result(
        timeout=TIMEOUT).urls["adapter_config.json"]
    signed_at = time.time()
    assert _fetch(url)

    heartbeats.sessions.discard(silent)  # from now on it is silent
    deadline = time.monotonic() + SESSION_TIMEOUT_S + 60
    while _is_open(srv, silent):
        assert time.monotonic() < deadline, "the silent session was never expired"
        assert not heartbeats.failures, "the heartbeating session must stay open"
        time.sleep(0.5)
    assert _raw(srv, "session_heartbeat", {"session_id": silent, "type": "session_heartbeat"}).status_code == 410

    # The heartbeats were recorded: that session is open and its run still trains.
    assert _is_open(srv, alive)
    step = _raw(srv, "optim_step", {"model_id": alive_run, "seq_id": 2, "type": "optim_step",
                                    "adam_params": {"learning_rate": 1e-3}}).json()
    assert "metrics" in _raw_result(srv, step["request_id"])
    # The silent one's run was released (the worker freed its adapter)...
    step = _raw(srv, "optim_step", {"model_id": silent_run, "seq_id": 3, "type": "optim_step",
                                    "adam_params": {"learning_rate": 1e-3}})
    assert step.status_code == 404 and "released" in step.json()["detail"]
    # ...its ephemeral sampler weights went with it, and its named checkpoint stays.
    listed = rest.list_checkpoints(silent_run).result(timeout=TIMEOUT).checkpoints
    assert [c.tinker_path for c in listed] == [kept_path]
    assert not _files_of(srv, ephemeral_path)
    deadline = time.monotonic() + 30
    while f"released run {silent_run}" not in srv.log():
        assert time.monotonic() < deadline, "the adapter of the expired session was not released"
        time.sleep(0.2)
    # The kept checkpoint is still usable.
    fresh = tinker.ServiceClient(base_url=srv.url, api_key=srv.keys["erin"])
    restored = fresh.create_training_client_from_state(kept_path).result(timeout=TIMEOUT)
    _train_step(restored)
    # Signatures carry whole seconds: wait until the 2 s lifetime has surely passed.
    time.sleep(max(0.0, signed_at + 3.5 - time.time()))
    with pytest.raises(urllib.error.HTTPError) as err:
        _fetch(url)
    assert err.value.code == 404
