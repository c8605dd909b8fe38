"""Run leases (workers.handoff) on the real database: exclusive until they expire."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sessions_app.models import ClientSession, Tenant
from workers.handoff import acquire_run, release_run_lease, renew_leases
from training_app.models import TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def run() -> TrainingRun:
    tenant = Tenant.objects.create(name="t")
    session = ClientSession.objects.create(id="sess-1", tenant=tenant)
    return TrainingRun.objects.create(id="sess-1:train:0", tenant=tenant, session=session, model_seq_id=0,
                                      base_model="m", lora_rank=4)


def test_a_lease_is_exclusive_until_it_expires(run: TrainingRun) -> None:
    assert acquire_run(run.id, "a", 30)
    assert acquire_run(run.id, "a", 30)  # re-entrant for its holder
    assert not acquire_run(run.id, "b", 30)
    run.refresh_from_db()
    assert run.lease_owner == "a" and run.lease_expires_at > timezone.now() + timedelta(seconds=20)

    # "a" stops renewing (killed): once expired, "b" takes it, and "a" cannot renew it back.
    TrainingRun.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert acquire_run(run.id, "b", 30)
    renew_leases("a", 30)
    release_run_lease(run.id, "a")
    run.refresh_from_db()
    assert run.lease_owner == "b"

    release_run_lease(run.id, "b")
    assert acquire_run(run.id, "c", 30)
