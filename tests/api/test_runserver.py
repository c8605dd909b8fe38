"""Issue #2: `python manage.py runserver` serves the same API as `tuft`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import tinker
from tinker import types

from tests.api.helpers import datum
from tests.conftest import MODEL_NAME, ROOT, free_port, write_models_yaml


def test_runserver_trains_and_samples(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = {**os.environ, "TUFT_HOME": str(tmp_path), "DJANGO_SETTINGS_MODULE": "tuft_project.settings",
           "TUFT_MODEL_CONFIG": str(write_models_yaml(tmp_path / "models.yaml", tiny_model_dir))}
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, cwd=ROOT, check=True, timeout=120)
    key = subprocess.run([*manage, "create_tenant", "rs"], env=env, cwd=ROOT, check=True, timeout=120,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    port = free_port()
    proc = subprocess.Popen([*manage, "runserver", "--noreload", f"127.0.0.1:{port}"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v1/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "runserver did not come up"
            time.sleep(0.3)
        client = tinker.ServiceClient(base_url=url, api_key=key)
        training = client.create_lora_training_client(base_model=MODEL_NAME, rank=4).result(timeout=60)
        out = training.forward_backward([datum([3, 4, 5], [4, 5, 6])], "cross_entropy").result(timeout=60)
        assert out.metrics["loss:sum"] > 0
        sampler = training.save_weights_and_get_sampling_client("rs").result(timeout=60)
        sample = sampler.sample(prompt=types.ModelInput.from_ints([3, 4]), num_samples=1,
                                sampling_params=types.SamplingParams(max_tokens=3)).result(timeout=60)
        assert 1 <= len(sample.sequences[0].tokens) <= 3
    finally:
        proc.terminate()
        proc.wait(timeout=15)
