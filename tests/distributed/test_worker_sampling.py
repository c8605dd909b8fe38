"""Redis mode sampling through RQ workers, once per back end (HF, then vLLM when installed).

Two workers, both armed with ``TUFT_FAILPOINT``: the first sample anywhere stalls
after it was decoded and before its result is recorded, so the test SIGKILLs
that worker mid-sample on any machine speed; the survivor takes the request over
and is then the only worker. A ``save_weights`` stalls it too (second marker),
which lets the test queue several tenants' samples before the worker looks: it
then decodes them all in one engine call.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import tinker
from tinker import types

from tests.api.helpers import completion_datum
from tests.conftest import MODEL_NAME, VLLM_START_TIMEOUT_S
from tests.distributed.cluster import Cluster, postgres_database, redis_reachable, wait_for_file

REDIS_URL = "redis://127.0.0.1:6379/9"
PROMPT = [101, 42, 37, 102]
# Each tenant teaches its adapter a different continuation of the same prompt.
TARGETS = {"ann": [99, 73, 55, 12, 400, 7], "ben": [5, 600, 31, 88, 250, 14], "cat": [17, 900, 3, 64, 128, 311]}
GREEDY = types.SamplingParams(max_tokens=8, temperature=0.0, stop=[])
# Generous: on the vLLM side a request may wait for the survivor's engine to start.
TIMEOUT = VLLM_START_TIMEOUT_S


def kill_marker(cluster: Cluster) -> Path:
    return cluster.home / "kill-mid-sample.pid"


def hold_marker(cluster: Cluster) -> Path:
    return cluster.home / "hold-in-save.pid"


@pytest.fixture(scope="module", params=[
    "hf", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.timeout(3 * VLLM_START_TIMEOUT_S)])])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            tiny_model_dir: Path) -> Iterator[Cluster]:
    if not redis_reachable(REDIS_URL):
        pytest.skip("Redis is not running at 127.0.0.1:6379 (start it with .ci/services.sh)")
    if request.param == "vllm" and importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (bash scripts/install-vllm.sh)")
    c = Cluster(home=tmp_path_factory.mktemp(f"worker-sampling-{request.param}"), model_dir=tiny_model_dir,
                redis_url=REDIS_URL, database_url=postgres_database(), vllm_limits=True)
    armed = {
        "TUFT_DEFAULT_SAMPLER": request.param,
        "TUFT_LOG_LEVEL": "DEBUG",  # the worker logs each batched pass at debug level
        "TUFT_SAMPLE_BATCH_MAX": "8",
        "TUFT_FAILPOINT": f"sample:{kill_marker(c)},save_weights:{hold_marker(c)}",
    }
    try:
        c.start_api()
        c.start_worker("w1", armed)
        c.start_worker("w2", armed)
        for name in TARGETS:
            c.create_tenant(name)
        c.wait_workers("w1", "w2")
        yield c
    finally:
        c.stop()


def client(cluster: Cluster, tenant: str) -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=cluster.url, api_key=cluster.keys[tenant])


def test_a_worker_killed_mid_sample_is_recovered_with_identical_tokens(cluster: Cluster) -> None:
    sampler = client(cluster, "ann").create_sampling_client(base_model=MODEL_NAME).result(timeout=TIMEOUT)
    prompt = types.ModelInput.from_ints(PROMPT)
    answer: dict[str, Any] = {}

    def wait() -> None:
        try:
            answer["result"] = sampler.sample(prompt, 2, GREEDY).result(timeout=TIMEOUT)
        except Exception as exc:  # surfaced below
            answer["result"] = exc

    waiter = threading.Thread(target=wait)
    waiter.start()
    # The worker that took it decoded it and stalls before recording the result: kill it.
    cluster.kill_pid(int(wait_for_file(kill_marker(cluster), TIMEOUT, cluster)))
    waiter.join(timeout=TIMEOUT)
    assert not waiter.is_alive(), "the sample never finished after its worker was killed\n" + cluster.logs()
    recovered = answer["result"]
    assert isinstance(recovered, types.SampleResponse), f"{recovered!r}\n{cluster.logs()}"
    attempts = cluster.sql_rows("select attempts from training_app_operation where kind = 'sample'")
    assert attempts == [(2,)], cluster.logs()  # decoded by the killed worker, then by the survivor

    uninterrupted = sampler.sample(prompt, 2, GREEDY).result(timeout=TIMEOUT)
    assert [list(s.tokens) for s in recovered.sequences] == [list(s.tokens) for s in uninterrupted.sequences]
    assert len(recovered.sequences[0].tokens) == GREEDY.max_tokens
    for got, want in zip(recovered.sequences, uninterrupted.sequences):
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-5)


def test_one_worker_decodes_the_queued_samples_of_every_tenant_together(cluster: Cluster) -> None:
    for name in list(cluster.workers)[1:]:  # one worker (after the test above, only the survivor is left)
        cluster.kill_worker(name)
    trainers = {t: client(cluster, t).create_lora_training_client(base_model=MODEL_NAME, rank=8, seed=1)
                .result(timeout=TIMEOUT) for t in TARGETS}
    for _ in range(10):
        steps = [(tr.forward_backward([completion_datum(PROMPT, TARGETS[t])], "cross_entropy"),
                  tr.optim_step(types.AdamParams(learning_rate=3e-2))) for t, tr in trainers.items()]
        for fb, opt in steps:
            fb.result(timeout=TIMEOUT)
            opt.result(timeout=TIMEOUT)
    samplers = {t: client(cluster, t).create_sampling_client(
        model_path=tr.save_weights_for_sampler(f"{t}-final").result(timeout=TIMEOUT).path).result(timeout=TIMEOUT)
        for t, tr in trainers.items()}

    # Hold the only worker in a save_weights, queue every tenant's sample, let it go.
    held = trainers["ann"].save_state("held")
    wait_for_file(hold_marker(cluster), TIMEOUT, cluster)
    prompt = types.ModelInput.from_ints(PROMPT)
    queued = {t: s.sample(prompt, 1, GREEDY) for t, s in samplers.items()}
    cluster.wait_sql_count("select count(*) from training_app_operation where kind = 'sample' "
                           "and status = 'pending'", len(TARGETS), timeout=120)
    Path(f"{hold_marker(cluster)}.release").touch()
    together = {t: f.result(timeout=TIMEOUT).sequences[0] for t, f in queued.items()}
    held.result(timeout=TIMEOUT)

    for tenant, seq in together.items():
        # Each tenant got its own adapter's continuation, exactly as when it samples alone.
        assert list(seq.tokens)[:4] == TARGETS[tenant][:4], (tenant, seq.tokens, cluster.logs())
        alone = samplers[tenant].sample(prompt, 1, GREEDY).result(timeout=TIMEOUT).sequences[0]
        assert list(alone.tokens) == list(seq.tokens)
        assert seq.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
    logs = "".join(p.read_text(errors="replace") for p in cluster.home.glob("worker-*.log"))
    passes = [int(n) for n in re.findall(r"one pass for (\d+) samples", logs)]
    assert passes and max(passes) == len(TARGETS), cluster.logs()
