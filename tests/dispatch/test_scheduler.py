"""dispatch.scheduler.FairScheduler without threads or Django: fairness, batches, budgets."""

from __future__ import annotations

from dispatch.scheduler import FairScheduler, Work


def fb(tenant: str, run: str, seq: int = 1, cost: int = 100, model: str = "m") -> Work:
    return Work(f"{run}#{seq}", tenant=tenant, model=model, run_id=run, seq_id=seq, cost=cost)


def single(tenant: str, run: str, seq: int = 1) -> Work:
    return Work(f"{run}#{seq}", tenant=tenant, model="m", run_id=run, seq_id=seq, cost=0, batchable=False)


def sample(tenant: str, n: int, cost: int = 50) -> Work:
    return Work(f"{tenant}-s{n}", tenant=tenant, model="m", cost=cost)


def test_a_tenant_with_one_op_is_served_in_the_first_batch_behind_a_tenant_with_a_hundred() -> None:
    s = FairScheduler()
    for i in range(100):
        s.add(sample("a", i))
    s.add(sample("b", 0))
    first = s.next_batch(token_budget=10_000, max_items=4)
    assert "b-s0" in [w.request_id for w in first]
    assert len(first) == 4


def test_with_batches_of_one_the_small_tenant_waits_at_most_one_slice() -> None:
    s = FairScheduler()
    for i in range(100):
        s.add(sample("a", i))
    s.add(sample("b", 0))
    picked = [s.next_batch(token_budget=10_000, max_items=1)[0].request_id for _ in range(2)]
    assert picked == ["a-s0", "b-s0"]


def test_tenants_take_turns_never_fifo_across_tenants() -> None:
    s = FairScheduler()
    for i in range(3):
        s.add(sample("a", i))
    for i in range(3):
        s.add(sample("b", i))
    s.add(sample("c", 0))
    order = [s.next_batch(10_000, 1)[0].request_id for _ in range(7)]
    assert order == ["a-s0", "b-s0", "c-s0", "a-s1", "b-s1", "a-s2", "b-s2"]
    assert s.next_batch(10_000, 1) == [] and len(s) == 0


def test_a_batch_takes_one_op_per_tenant_per_round_within_a_tenants_order() -> None:
    s = FairScheduler()
    for i in range(3):
        s.add(sample("a", i))
    s.add(sample("b", 0))
    batch = [w.request_id for w in s.next_batch(10_000, 3)]
    assert batch == ["a-s0", "b-s0", "a-s1"]


def test_ready_training_ops_of_several_runs_form_one_batch_under_the_token_budget() -> None:
    s = FairScheduler()
    s.add(fb("a", "ra", cost=300))
    s.add(fb("b", "rb", cost=300))
    s.add(fb("c", "rc", cost=300))
    batch = s.next_batch(token_budget=700, max_items=16)
    assert [w.run_id for w in batch] == ["ra", "rb"]  # rc would exceed 700 tokens
    assert [w.run_id for w in s.next_batch(700, 16)] == ["rc"]


def test_a_huge_request_runs_alone_and_is_never_starved() -> None:
    s = FairScheduler()
    s.add(fb("a", "huge", cost=50_000))
    s.add(fb("b", "small", cost=10))
    assert [w.run_id for w in s.next_batch(token_budget=1000, max_items=16)] == ["huge"]
    assert [w.run_id for w in s.next_batch(1000, 16)] == ["small"]
    # And behind small ones, the huge one leads when its turn comes.
    s.add(fb("b", "small2", cost=10))
    s.add(fb("a", "huge2", cost=50_000))
    s.add(fb("c", "small3", cost=10))
    assert [w.run_id for w in s.next_batch(1000, 16)] == ["small2", "small3"]
    assert [w.run_id for w in s.next_batch(1000, 16)] == ["huge2"]


def test_non_batchable_ops_run_alone_and_keep_their_tenants_turn() -> None:
    s = FairScheduler()
    s.add(single("a", "ra"))  # an optim_step
    s.add(fb("b", "rb"))
    s.add(fb("c", "rc"))
    assert [w.run_id for w in s.next_batch(10_000, 16)] == ["ra"]
    assert [w.run_id for w in s.next_batch(10_000, 16)] == ["rb", "rc"]
    # A forward_backward batch never pulls in another tenant's optim_step; that tenant leads next.
    s.add(fb("b", "rb", seq=2))
    s.add(single("c", "rc", seq=2))
    s.add(fb("a", "ra", seq=2))
    assert [w.run_id for w in s.next_batch(10_000, 16)] == ["rb", "ra"]
    assert [w.run_id for w in s.next_batch(10_000, 16)] == ["rc"]


def test_only_work_of_the_leaders_base_model_shares_its_batch() -> None:
    s = FairScheduler()
    s.add(fb("a", "ra", model="m1"))
    s.add(fb("b", "rb", model="m2"))
    s.add(fb("c", "rc", model="m1"))
    assert [w.run_id for w in s.next_batch(10_000, 16)] == ["ra", "rc"]
    assert [w.run_id for w in s.next_batch(10_000, 16)] == ["rb"]


def test_remove_run_takes_out_only_that_runs_work() -> None:
    s = FairScheduler()
    s.add(fb("a", "ra"))
    s.add(fb("a", "ra2"))
    s.add(fb("b", "rb"))
    assert [w.run_id for w in s.remove_run("ra")] == ["ra"]
    assert s.depth_by_tenant() == {"a": 1, "b": 1}
    s.remove_run("rb")
    assert s.depth_by_tenant() == {"a": 1}
    assert [w.run_id for w in s.next_batch(10_000, 16)] == ["ra2"]


def test_only_work_of_one_group_shares_a_batch() -> None:
    """optim_steps batch with optim_steps, passes with passes: each group is one engine call."""
    s = FairScheduler()
    s.add(Work("a-opt", tenant="a", model="m", run_id="ra", seq_id=2, cost=0, group="optim"))
    s.add(Work("b-fb", tenant="b", model="m", run_id="rb", seq_id=1, cost=100, group="pass"))
    s.add(Work("c-opt", tenant="c", model="m", run_id="rc", seq_id=2, cost=0, group="optim"))
    s.add(Work("d-fb", tenant="d", model="m", run_id="rd", seq_id=1, cost=100, group="pass"))
    assert [w.request_id for w in s.next_batch(10_000, 8)] == ["a-opt", "c-opt"]
    assert [w.request_id for w in s.next_batch(10_000, 8)] == ["b-fb", "d-fb"]
