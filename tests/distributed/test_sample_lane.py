"""Redis mode: a worker busy with one tenant's sample still trains another tenant's run.

Found by bench/bench_isolation.py --mode redis: the RQ worker ran a sample job
to its end (a maximal sample decodes for minutes on a CPU) before it took the
next job, so a trainer's step waited behind every flood request. The worker now
decodes samples on a lane thread of its own, as the embedded server does; the
RQ job loop stays free for training.

No timing: the flooder's sample is held at a failpoint (decoded, not yet
recorded) for as long as the test wants; the trainer's step must finish while
it is held, and the sample must finish once it is let go.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
import tinker
from tinker import types as T

from tests.conftest import MODEL_NAME
from tests.distributed.cluster import Cluster, postgres_database, redis_reachable
from tests.distributed.training import TOKENS, new_run, submit_step

REDIS_URL = "redis://127.0.0.1:6379/9"
WAIT_S = 300  # bounded, generous for a loaded machine; nothing here measures time


def step(training_client: tinker.TrainingClient) -> None:
    for future in submit_step(training_client):
        future.result(timeout=WAIT_S)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Cluster]:
    if not redis_reachable(REDIS_URL):
        pytest.skip("Redis is not running at 127.0.0.1:6379 (start it with .ci/services.sh)")
    home = tmp_path_factory.mktemp("sample-lane")
    c = Cluster(home=home, model_dir=tiny_model_dir, redis_url=REDIS_URL, database_url=postgres_database())
    try:
        c.start_api()
        c.start_worker("w1", {"TUFT_FAILPOINT": f"sample:{home / 'sample-held'}"})
        c.create_tenant("flooder")
        c.create_tenant("trainer")
        c.wait_workers("w1")
        yield c
    finally:
        c.stop()


def test_a_held_sample_does_not_stop_another_tenants_training(cluster: Cluster) -> None:
    marker = cluster.home / "sample-held"
    trainer = new_run(tinker.ServiceClient(base_url=cluster.url, api_key=cluster.keys["trainer"]))
    step(trainer)  # the run is loaded in the worker
    sampler = tinker.ServiceClient(base_url=cluster.url, api_key=cluster.keys["flooder"]).create_sampling_client(
        base_model=MODEL_NAME).result(timeout=WAIT_S)
    sample = sampler.sample(T.ModelInput.from_ints(TOKENS[:6]), 4, T.SamplingParams(max_tokens=8))
    deadline = time.monotonic() + WAIT_S
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the sample never reached the worker:\n" + cluster.logs()

    for _ in range(2):  # two full steps while the sample is still held in the worker
        step(trainer)
    assert cluster.sql_rows("select status from training_app_operation where kind = 'sample'") == [("running",)], \
        cluster.logs()

    (cluster.home / "sample-held.release").write_text("")
    result = sample.result(timeout=WAIT_S)
    assert len(result.sequences) == 4
