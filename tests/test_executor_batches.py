"""EngineExecutor.execute_batch: one engine call, every operation's outcome recorded on its own."""

from __future__ import annotations

from typing import Any

import pytest

from engine.types import EngineError, UserInputError
from sessions_app.models import Tenant
from workers import executor as jobs
from training_app.models import Operation


class FakeEngine:
    """Stands in for the engine's batch entry point only; records what one call received."""

    def __init__(self, fail_whole_call: bool = False) -> None:
        self.calls: list[list[Any]] = []
        self.fail_whole_call = fail_whole_call

    def run(self, requests: list[Any]) -> list[Any]:
        self.calls.append(list(requests))
        if self.fail_whole_call:
            raise RuntimeError("device lost")
        return [EngineError("engine refused it") if r == "refused" else {"echo": r} for r in requests]


def _handler(engine: FakeEngine) -> jobs.BatchHandler:
    def prepare(_: object, op: Operation) -> tuple[Any, Any]:
        if op.request["x"] == "bad":
            raise UserInputError("bad input")
        return op.request["x"], op.request_id

    return jobs.BatchHandler(prepare=prepare, run=lambda _, requests: engine.run(requests),
                             finish=lambda op, ctx, result: jobs.Outcome(result={**result, "ctx": ctx}))


def _ops(values: list[str]) -> list[str]:
    tenant = Tenant.objects.create(name="t")
    for i, value in enumerate(values):
        Operation.objects.create(request_id=f"req-{i}", tenant=tenant, kind="sample", request={"x": value})
    return [f"req-{i}" for i in range(len(values))]


@pytest.mark.django_db(transaction=True)
def test_one_engine_call_and_each_outcome_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine()
    monkeypatch.setitem(jobs.BATCH_HANDLERS, "sample", _handler(engine))
    monkeypatch.setattr(jobs.EngineExecutor, "engine", None)  # the fake handler needs no engine
    ids = _ops(["a", "bad", "refused", "b"])
    jobs.EngineExecutor().execute_batch(ids)
    assert engine.calls == [["a", "refused", "b"]]  # the bad one never reached the engine
    ops = {op.request_id: op for op in Operation.objects.all()}
    assert ops["req-0"].status == Operation.Status.COMPLETED and ops["req-0"].result == {"echo": "a", "ctx": "req-0"}
    assert ops["req-3"].result == {"echo": "b", "ctx": "req-3"}
    assert (ops["req-1"].status, ops["req-1"].error_category, ops["req-1"].error) == ("failed", "user", "bad input")
    assert (ops["req-2"].status, ops["req-2"].error_category) == ("failed", "server")


@pytest.mark.django_db(transaction=True)
def test_a_failing_engine_call_fails_every_operation_of_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(jobs.BATCH_HANDLERS, "sample", _handler(FakeEngine(fail_whole_call=True)))
    monkeypatch.setattr(jobs.EngineExecutor, "engine", None)
    jobs.EngineExecutor().execute_batch(_ops(["a", "b"]))
    for op in Operation.objects.all():
        assert op.status == Operation.Status.FAILED and op.error_category == "server"
        assert "device lost" in op.error
