"""Redis mode: one worker leases several runs of its base model and batches their steps.

Three tenants' runs each have a step queued while no worker is alive; the worker
that then starts takes all three runs at once, restores them (the last automatic
checkpoint is from create_model: TUFT_STATE_CHECKPOINT_EVERY=4 skipped the first
optim_step, so it is replayed) and runs their forward_backwards in one pass. The
losses are exactly those of an uninterrupted run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest
import tinker

from tests.distributed.cluster import Cluster, postgres_database, redis_reachable
from tests.distributed.training import new_run, step, submit_step

REDIS_URL = "redis://127.0.0.1:6379/9"
TENANTS = ("ann", "ben", "cat")
DEBUG = {"TUFT_LOG_LEVEL": "DEBUG"}  # the worker logs each batched pass at debug level


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Cluster]:
    if not redis_reachable(REDIS_URL):
        pytest.skip("Redis is not running at 127.0.0.1:6379 (start it with .ci/services.sh)")
    c = Cluster(home=tmp_path_factory.mktemp("batching"), model_dir=tiny_model_dir, redis_url=REDIS_URL,
                database_url=postgres_database())
    try:
        c.start_api()
        c.start_worker("w1", DEBUG)
        for name in TENANTS:
            c.create_tenant(name)
        c.wait_workers("w1")
        yield c
    finally:
        c.stop()


def test_one_worker_batches_the_ready_steps_of_several_runs(cluster: Cluster, reference_losses: list[float]) -> None:
    runs = [new_run(tinker.ServiceClient(base_url=cluster.url, api_key=cluster.keys[name])) for name in TENANTS]
    first = [step(run) for run in runs]
    cluster.kill_worker("w1")  # idle: it holds no lease, only the runs' state in memory
    pending = [submit_step(run) for run in runs]
    cluster.wait_sql_count("select count(*) from training_app_operation where kind = 'forward_backward' "
                           "and status = 'pending'", len(runs))
    cluster.start_worker("w2", DEBUG)
    second = [float(fb.result(timeout=300).metrics["loss:sum"]) for fb, _ in pending]
    for _, opt in pending:
        opt.result(timeout=300)
    third = [step(run) for run in runs]
    for losses in zip(first, second, third):
        assert list(losses) == pytest.approx(reference_losses[:3], rel=1e-5), cluster.logs()
    log = (cluster.home / "worker-w2.log").read_text(errors="replace")
    passes = re.findall(r"one pass for (\d+) operations", log)
    assert passes and max(int(n) for n in passes) >= 2, cluster.logs()
