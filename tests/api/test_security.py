"""Hardening issue, security items: secret key, download tokens, revocation at use, one server per home.

* The secret key is generated into ``TUFT_HOME`` (0600) and shared by every
  process of that home; tokens forged with the old constant key are refused;
  a weak key is refused in production.
* Download URLs name the tenant and checkpoint version and are re-checked at
  download: unpublishing, overwriting or deleting a checkpoint revokes them.
* Another tenant's sampler stops sampling as soon as the checkpoint is unpublished.
* A second ``tuft`` on the same home (or port) is refused before it touches any session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import tinker
from django.core import signing
from tinker import types

from tests.api.helpers import datum
from tests.conftest import MODEL_NAME, ROOT, LiveServer, free_port, start_server, write_models_yaml

TIMEOUT = 120
OLD_DEFAULT_KEY = "tuft-dev-insecure-change-me"
DOWNLOAD_SALT = "tuft.checkpoint-download"


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def _urls(server: LiveServer, tenant: str, tinker_path: str) -> dict[str, str]:
    """external_weights_urls of any checkpoint kind (the SDK asks for external ones only)."""
    run_id, kind, name = tinker_path.removeprefix("tinker://").split("/")
    r = httpx.get(f"{server.url}/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/external_weights_urls",
                  headers={"X-API-Key": server.keys[tenant]}, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json()["urls"])


def _train_step(tc: tinker.TrainingClient) -> None:
    tc.forward_backward([datum([3, 40, 41, 42], [40, 41, 42, 43])], "cross_entropy").result(timeout=TIMEOUT)
    tc.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=TIMEOUT)


def _forge(key: str, payload: dict) -> str:
    signer = signing.TimestampSigner(key=key, salt=DOWNLOAD_SALT, fallback_keys=[])
    return signer.sign_object(payload, serializer=signing.JSONSerializer, compress=True)


@pytest.fixture(scope="module")
def owner(server: LiveServer) -> tuple[tinker.ServiceClient, tinker.RestClient]:
    key = server.create_tenant("sec-owner")
    return tinker.ServiceClient(base_url=server.url, api_key=key), tinker.RestClient(base_url=server.url, api_key=key)


@pytest.fixture(scope="module")
def other(server: LiveServer) -> tuple[tinker.ServiceClient, tinker.RestClient]:
    key = server.create_tenant("sec-other")
    return tinker.ServiceClient(base_url=server.url, api_key=key), tinker.RestClient(base_url=server.url, api_key=key)


def test_secret_key_is_generated_per_home_and_old_constant_forges_nothing(
    server: LiveServer, owner: tuple[tinker.ServiceClient, tinker.RestClient]
) -> None:
    key_file = server.home / "secret_key"
    assert key_file.exists() and key_file.stat().st_mode & 0o777 == 0o600
    # manage.py (and so tuft_worker) of the same home uses the very same key.
    same = server.manage("shell", "-c", f"from django.conf import settings; "
                                        f"print(settings.SECRET_KEY == open({str(key_file)!r}).read().strip())")
    assert same.strip().splitlines()[-1] == "True"

    sc, rest = owner
    tc = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    exported = tc.save_weights_external("forge-target").result(timeout=TIMEOUT).path
    good = rest.get_external_weights_urls(exported).result(timeout=TIMEOUT).urls["adapter_config.json"]
    assert _status(good) == 200
    # Tokens forged offline with the old built-in key, in the old and the new layout, for
    # every small checkpoint id: all refused (they used to download any checkpoint).
    for pk in range(1, 40):
        for payload in ({"c": pk, "f": "adapter_config.json"},
                        {"c": pk, "t": 1, "v": 0, "f": "adapter_config.json"}):
            assert _status(f"{server.url}/api/v1/downloads/{_forge(OLD_DEFAULT_KEY, payload)}") == 404


def _tuft(home: Path, model_config: Path, port: int, env: dict[str, str], *extra: str,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuft_project.cli", "--port", str(port), "--home", str(home),
         "--model-config", str(model_config), "--no-dev-key", *extra],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def test_weak_secret_key_is_refused_in_production(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_models_yaml(tmp_path / "models.yaml", tiny_model_dir)
    base = {**os.environ, "TUFT_HOME": str(tmp_path / "home"), "TUFT_MODEL_CONFIG": str(config),
            "DJANGO_SETTINGS_MODULE": "tuft_project.settings", "TUFT_SECRET_KEY": OLD_DEFAULT_KEY}
    production = {**base, "TUFT_ENV": "production"}
    out = _tuft(tmp_path / "home", config, free_port(), production)
    assert out.returncode != 0 and "weak" in out.stderr, out.stdout + out.stderr
    check = subprocess.run([sys.executable, str(ROOT / "manage.py"), "check"], env=production, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode != 0 and "weak" in check.stderr
    # Serving beyond loopback counts as production too.
    out = _tuft(tmp_path / "home", config, free_port(), base, "--host", "0.0.0.0")
    assert out.returncode != 0 and "weak" in out.stderr, out.stdout + out.stderr
    assert not (tmp_path / "home" / "db.sqlite3").exists(), "refused before touching the database"


def test_download_urls_are_revoked_by_unpublish_overwrite_and_delete(
    server: LiveServer, owner: tuple[tinker.ServiceClient, tinker.RestClient],
    other: tuple[tinker.ServiceClient, tinker.RestClient],
) -> None:
    sc, rest = owner
    tc = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    _train_step(tc)
    path = tc.save_weights_for_sampler("shared-download").result(timeout=TIMEOUT).path
    rest.publish_checkpoint_from_tinker_path(path).result(timeout=TIMEOUT)
    theirs = _urls(server, "sec-other", path)["adapter_model.safetensors"]
    mine = _urls(server, "sec-owner", path)["adapter_model.safetensors"]
    assert _status(theirs) == 200 and _status(mine) == 200

    rest.unpublish_checkpoint_from_tinker_path(path).result(timeout=TIMEOUT)
    assert _status(theirs) == 404, "an issued link stops working when the checkpoint is unpublished"
    assert _status(mine) == 200, "the owner's own link still works"

    # A new save under the same name is a new version: links to the old files stop working.
    _train_step(tc)
    assert tc.save_weights_for_sampler("shared-download").result(timeout=TIMEOUT).path == path
    assert _status(mine) == 404
    fresh = _urls(server, "sec-owner", path)["adapter_model.safetensors"]
    assert _status(fresh) == 200

    rest.delete_checkpoint_from_tinker_path(path).result(timeout=TIMEOUT)
    assert _status(fresh) == 404


def test_unpublishing_stops_another_tenants_sampler(
    server: LiveServer, owner: tuple[tinker.ServiceClient, tinker.RestClient],
    other: tuple[tinker.ServiceClient, tinker.RestClient],
) -> None:
    sc, rest = owner
    other_sc, _ = other
    tc = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    _train_step(tc)
    path = tc.save_weights_for_sampler("shared-sampling").result(timeout=TIMEOUT).path
    rest.publish_checkpoint_from_tinker_path(path).result(timeout=TIMEOUT)
    params = types.SamplingParams(max_tokens=3, temperature=0, stop=[])
    prompt = types.ModelInput.from_ints([3, 40, 41])
    theirs = other_sc.create_sampling_client(model_path=path).result(timeout=TIMEOUT)
    mine = sc.create_sampling_client(model_path=path).result(timeout=TIMEOUT)
    assert len(theirs.sample(prompt, 1, params).result(timeout=TIMEOUT).sequences[0].tokens) == 3

    rest.unpublish_checkpoint_from_tinker_path(path).result(timeout=TIMEOUT)
    with pytest.raises(tinker.NotFoundError, match="no longer available"):
        theirs.sample(prompt, 1, params).result(timeout=TIMEOUT)
    assert len(mine.sample(prompt, 1, params).result(timeout=TIMEOUT).sequences[0].tokens) == 3

    rest.publish_checkpoint_from_tinker_path(path).result(timeout=TIMEOUT)
    assert len(theirs.sample(prompt, 1, params).result(timeout=TIMEOUT).sequences[0].tokens) == 3
    rest.unpublish_checkpoint_from_tinker_path(path).result(timeout=TIMEOUT)
    rest.delete_checkpoint_from_tinker_path(path).result(timeout=TIMEOUT)
    with pytest.raises(tinker.NotFoundError):
        mine.sample(prompt, 1, params).result(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    """A server of this module's own (its home is shared with a second server below).

    Its models.yaml names no tokenizer_id, so get_info must report the model name.
    """
    home = tmp_path_factory.mktemp("sec-home")
    config = home / "models.yaml"
    config.write_text(f"supported_models:\n  - model_name: {MODEL_NAME}\n    model_path: {tiny_model_dir}\n"
                      "    max_model_len: 256\n")
    srv = start_server(home, config, manage=False)
    try:
        yield srv
    finally:
        srv.stop()


def test_second_server_on_the_same_home_or_port_is_refused_before_touching_sessions(
    own_server: LiveServer, tmp_path: Path
) -> None:
    key = own_server.create_tenant("lock-user")
    sc = tinker.ServiceClient(base_url=own_server.url, api_key=key)
    tc = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    _train_step(tc)
    config = Path(own_server.env["TUFT_MODEL_CONFIG"])
    port = int(own_server.url.rsplit(":", 1)[1])

    # Same home, another port: refused by the home's lock (it used to close the running
    # server's sessions in recovery, then serve beside it).
    same_home = _tuft(own_server.home, config, free_port(), own_server.env)
    assert same_home.returncode == 1, same_home.stdout + same_home.stderr
    assert "already serving" in same_home.stderr and "serving" not in same_home.stdout
    # Another home on the same port and (with DATABASE_URL) the same database: the port is
    # refused before migrating or recovering anything, and no URL is printed.
    other_home = _tuft(tmp_path / "other-home", config, port, own_server.env)
    assert other_home.returncode == 1, other_home.stdout + other_home.stderr
    assert "cannot listen" in other_home.stderr and "serving" not in other_home.stdout

    # The first server's session, run and adapter are untouched.
    _train_step(tc)
    sampler = tc.save_weights_and_get_sampling_client().result(timeout=TIMEOUT)
    params = types.SamplingParams(max_tokens=2, temperature=0, stop=[])
    assert len(sampler.sample(types.ModelInput.from_ints([3, 40]), 1, params).result(timeout=TIMEOUT)
               .sequences[0].tokens) == 2


def test_get_info_reports_a_tokenizer_name_not_a_server_path(
    own_server: LiveServer, server: LiveServer, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = own_server.create_tenant("tokenizer-user")
    sc = tinker.ServiceClient(base_url=own_server.url, api_key=key)
    tc = sc.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT)
    info = httpx.post(f"{own_server.url}/api/v1/get_info", json={"model_id": tc.model_id, "type": "get_info"},
                      headers={"X-API-Key": key}, timeout=30).json()
    assert info["model_data"]["tokenizer_id"] == MODEL_NAME  # no tokenizer_id in models.yaml

    # models.yaml's tokenizer_id (the shared server's names the local directory, as the quick
    # start's does) is what the SDK's get_tokenizer() loads: offline on this machine.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    alice = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    tokenizer = alice.create_lora_training_client(base_model=MODEL_NAME, rank=2).result(timeout=TIMEOUT).get_tokenizer()
    assert tokenizer.decode(tokenizer.encode("hello tokenizer")) == "hello tokenizer"


def test_quickstart_models_yaml_names_the_local_tokenizer(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tuft_project.model_config import load_config
    from tuft_project.quickstart import ensure_default_model_config

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny-qwen3").symlink_to(tiny_model_dir)  # already built: nothing to build
    spec = load_config(ensure_default_model_config(tmp_path)).models[0]
    assert spec.tokenizer_id == str(tmp_path / "models" / "tiny-qwen3")
