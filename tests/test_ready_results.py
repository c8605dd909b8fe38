"""The answers kept in memory for retrieve_future (training_app.ready_results).

The live behaviour (the tenant check, revocation, the answer a poll gets) is in
tests/api/test_long_poll.py; here: the kept answer is byte for byte what the
database's row renders to, and the store's bounds.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from sessions_app.models import Tenant
from training_app.models import Operation
from training_app.ready_results import ReadyResults, ready_results, render_operation
from workers import executor as jobs


@pytest.fixture
def kept() -> Iterator[ReadyResults]:
    ready_results.clear()
    ready_results.enabled = True
    try:
        yield ready_results
    finally:
        ready_results.enabled = False
        ready_results.clear()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("outcome", [
    jobs.Outcome(result={"metrics": {"loss:sum": 1.25, "x": 1e-7}, "type": "optim_step", "n": [1, 2], "s": "é\u2028"}),
    jobs.Outcome(result=None, blob=b"\x08\x01\x12\x00protobuf"),
    None,
], ids=["json", "protobuf", "failed"])
def test_the_kept_answer_is_what_the_database_renders(kept: ReadyResults, outcome: jobs.Outcome | None) -> None:
    tenant = Tenant.objects.create(name="t")
    op = Operation.objects.create(request_id="req-1", tenant=tenant, kind="optim_step")
    jobs._finish(op, outcome=outcome, error="" if outcome else "it broke", category="" if outcome else "user")
    answer = kept.get("req-1", tenant.id)
    assert answer is not None
    from_db = render_operation(Operation.objects.get(pk="req-1"))
    response = answer.response()
    assert response.content == from_db.content
    assert response["Content-Type"] == from_db["Content-Type"]
    assert response.status_code == from_db.status_code == 200


@pytest.mark.django_db(transaction=True)
def test_only_the_owning_tenant_gets_it_and_nothing_is_kept_when_disabled(kept: ReadyResults) -> None:
    owner, other = Tenant.objects.create(name="owner"), Tenant.objects.create(name="other")
    op = Operation.objects.create(request_id="req-2", tenant=owner, kind="optim_step")
    jobs._finish(op, outcome=jobs.Outcome(result={"x": 1}))
    assert kept.get("req-2", owner.id) is not None
    assert kept.get("req-2", other.id) is None
    kept.enabled = False  # e.g. an RQ worker process: its answers are read by no poll here
    op3 = Operation.objects.create(request_id="req-3", tenant=owner, kind="optim_step")
    jobs._finish(op3, outcome=jobs.Outcome(result={"x": 1}))
    assert kept.get("req-3", owner.id) is None


@pytest.mark.django_db(transaction=True)
def test_answers_expire_and_the_total_size_is_bounded() -> None:
    tenant = Tenant.objects.create(name="t")
    store = ReadyResults(ttl_s=3600, max_bytes=4000)
    store.enabled = True
    ops = [Operation(request_id=f"req-{i}", tenant=tenant, kind="forward_backward", status="completed",
                     result_blob=bytes(900)) for i in range(6)]
    for op in ops:
        store.put(op)
    kept = [op.request_id for op in ops if store.get(op.request_id, tenant.id) is not None]
    assert kept == ["req-2", "req-3", "req-4", "req-5"]  # the oldest went first; 4 x 900 bytes fit
    huge = Operation(request_id="req-huge", tenant=tenant, kind="forward_backward", status="completed",
                     result_blob=bytes(3000))
    store.put(huge)
    assert store.get("req-huge", tenant.id) is None  # over a quarter of the bound: not kept
    assert store.get("req-5", tenant.id) is not None
    now = [100.0]
    expiring = ReadyResults(ttl_s=30, clock=lambda: now[0])
    expiring.enabled = True
    expiring.put(ops[0])
    now[0] += 30
    assert expiring.get("req-0", tenant.id) is not None
    now[0] += 0.5
    assert expiring.get("req-0", tenant.id) is None
