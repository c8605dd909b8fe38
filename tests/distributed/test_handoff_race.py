"""A worker that loses its lease mid-step destroys nothing another worker relies on.

The two workers' steps are driven explicitly, in one thread, on the real
database and engine (no Redis, no sleeps): worker A runs a run's create_model
and, while it writes its automatic checkpoint, its lease runs out and worker B
takes the run over, runs the same operation, commits it and prunes. Then A
finishes its write. Before the fix, B's prune deleted A's temporary directory
and A's overwrite then moved B's committed ``seq-0`` away, so the run's next
step failed with "its automatic checkpoint …/seq-0 is missing".
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from engine import checkpoints
from sessions_app.models import ClientSession, Tenant
from tests.conftest import MODEL_NAME, write_models_yaml
from workers.handoff import Superseded, acquire_run, prune_state, run_state_dir, state_checkpoint
from training_app.models import Operation, TrainingRun
from workers.runtime import WorkerRuntime

pytestmark = pytest.mark.django_db(transaction=True)

LEASE_S = 300.0  # long: only the test expires a lease


@pytest.fixture
def distributed(settings: Any, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Distributed-mode settings (the Redis URL is never dialled here) and a fresh checkpoint directory."""
    monkeypatch.setenv("TUFT_WORKER_LEASE_S", str(LEASE_S))
    monkeypatch.setenv("TUFT_STATE_CHECKPOINT_EVERY", "1")  # every optim_step publishes its state here
    settings.TUFT_MODEL_CONFIG = write_models_yaml(tmp_path / "models.yaml", tiny_model_dir)
    settings.TUFT_CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    return tmp_path / "checkpoints"


def new_run() -> TrainingRun:
    tenant = Tenant.objects.create(name="racer")
    session = ClientSession.objects.create(id="sess-race", tenant=tenant)
    run = TrainingRun.objects.create(id="sess-race:train:0", tenant=tenant, session=session, model_seq_id=0,
                                     base_model=MODEL_NAME, lora_rank=2, lora_seed=0)
    Operation.objects.create(request_id="op-create", tenant=tenant, kind=Operation.Kind.CREATE_MODEL,
                             training_run=run, seq_id=0)
    return run


def expire_lease(run: TrainingRun) -> None:
    TrainingRun.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_a_superseded_worker_never_destroys_the_committed_checkpoint(
    distributed: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = new_run()
    worker_a, worker_b = WorkerRuntime("worker-a"), WorkerRuntime("worker-b")
    fsync_tree = checkpoints._fsync_tree
    interleaved: list[str] = []

    def b_takes_over_mid_write(root: Path) -> None:
        """Runs when A's checkpoint files are written, just before A renames them into place."""
        fsync_tree(root)
        if interleaved:
            return  # B's own write: nothing to interleave
        interleaved.append(str(root))
        expire_lease(run)  # A is slow: its lease runs out
        assert acquire_run(run.id, worker_b.name, LEASE_S)
        worker_b._drain_held([run.id])  # B re-runs create_model (A's op looks stale), commits, prunes

    monkeypatch.setattr(checkpoints, "_fsync_tree", b_takes_over_mid_write)
    assert acquire_run(run.id, worker_a.name, LEASE_S)
    with pytest.raises(Superseded):  # A's outcome is not recorded ...
        worker_a._drain_held([run.id])
    assert interleaved, "A never wrote its automatic checkpoint"

    # ... and B's committed state is intact.
    run.refresh_from_db()
    assert run.state_seq == 0 and run.lease_owner == worker_b.name
    assert Operation.objects.get(pk="op-create").worker == worker_b.name
    assert (state_checkpoint(run, 0) / checkpoints.ADAPTER_WEIGHTS).exists()
    assert sorted(p.name for p in run_state_dir(run).iterdir()) == ["seq-0"], "A left files behind"

    # A third worker (no copy of the run in memory) restores from seq-0 for the next step.
    Operation.objects.create(request_id="op-step", tenant=run.tenant, kind=Operation.Kind.OPTIM_STEP,
                             training_run=run, seq_id=1, request={
                                 "model_id": run.id, "seq_id": 1, "type": "optim_step",
                                 "adam_params": {"learning_rate": 1e-3}})
    expire_lease(run)
    worker_c = WorkerRuntime("worker-c")
    assert acquire_run(run.id, worker_c.name, LEASE_S)
    worker_c._drain_held([run.id])
    step = Operation.objects.get(pk="op-step")
    assert step.status == Operation.Status.COMPLETED, step.error
    run.refresh_from_db()
    assert run.state_seq == 1
    assert sorted(p.name for p in run_state_dir(run).iterdir()) == ["seq-1"]


def test_pruning_with_an_outdated_state_seq_keeps_newer_states_and_files_in_progress(distributed: Path) -> None:
    run = new_run()
    directory = run_state_dir(run)
    for name in ("seq-0", "seq-1", "seq-2", ".staged-seq-3-abc", ".tmp-seq-3-def"):
        (directory / name).mkdir(parents=True)
    prune_state(run, keep_seq=1)  # a worker that read state_seq=1 before another committed seq-2
    assert sorted(p.name for p in directory.iterdir()) == [".staged-seq-3-abc", ".tmp-seq-3-def", "seq-1", "seq-2"]
    prune_state(run, keep_seq=None)  # a released run: everything goes
    assert not directory.exists()
