"""EngineExecutor never leaves a future running when recording its outcome fails."""

from __future__ import annotations

import pytest

from sessions_app.models import Tenant
from workers import executor as jobs
from training_app.models import Operation


@pytest.mark.django_db(transaction=True)
def test_unrecordable_result_fails_the_future(monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = Tenant.objects.create(name="t")
    op = Operation.objects.create(request_id="req-x", tenant=tenant, kind="sample")
    # A handler whose result the database cannot store (not JSON serialisable).
    monkeypatch.setitem(jobs.HANDLERS, "sample", lambda engine, op: jobs.Outcome(result={"x": object()}))
    executor = jobs.EngineExecutor()
    monkeypatch.setattr(jobs.EngineExecutor, "engine", None)  # the handler needs no engine
    executor.execute(op.request_id)
    op.refresh_from_db()
    assert op.status == Operation.Status.FAILED
    assert op.error_category == "server" and "recording the result" in op.error
