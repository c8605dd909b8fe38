"""Redis restarting mid-run (losing every queue and key) is survived.

Runs its own redis-server on a free port, so that stopping it disturbs no
other test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import tinker

from tests.distributed.cluster import Cluster, PrivateRedis, postgres_database, redis_server_available
from tests.distributed.training import STEPS, new_run, step, submit_step


def test_redis_restart_mid_run(tmp_path: Path, tiny_model_dir: Path, reference_losses: list[float]) -> None:
    if not redis_server_available():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    redis_server = PrivateRedis(tmp_path / "redis")
    redis_server.start()
    # Configured through REDIS_URL (the models.yaml block is covered by test_distributed).
    cluster = Cluster(home=tmp_path / "home", model_dir=tiny_model_dir, redis_url=redis_server.url,
                      persistence="disabled", database_url=postgres_database())
    try:
        cluster.start_api()
        cluster.start_worker("w1")
        cluster.create_tenant("alice")
        cluster.wait_workers("w1")
        training_client = new_run(tinker.ServiceClient(base_url=cluster.url, api_key=cluster.keys["alice"]))
        losses = [step(training_client)]

        redis_server.stop()
        # Submitted while Redis is down: recorded in the database, queued later.
        fb, opt = submit_step(training_client)
        cluster.wait_sql_count("select count(*) from training_app_operation where training_run_id = %s", 5,
                               training_client.model_id)
        time.sleep(1.0)
        redis_server.start()
        losses.append(float(fb.result().metrics["loss:sum"]))
        opt.result()
        losses += [step(training_client) for _ in range(STEPS - 2)]
        assert losses == pytest.approx(reference_losses, rel=1e-5), cluster.logs()
        # The worker registered itself again on the new Redis.
        assert cluster.worker_id("w1") in {w["name"] for w in cluster.queues()["workers"]}
    finally:
        cluster.stop()
        redis_server.stop()
