"""fair: weighted fair share of generated tokens across tenants, within a tier; strict
tiers across them, with preemption as in priority."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import pytest
from policy_helpers import make_request, make_running, make_worker, placed_ids, schedule

from scheduler_svc.data import PendingRequest, RunningRequest
from scheduler_svc.policies import make_policy
from scheduler_svc.policy_fair import FairPolicy, parse_tenant_weights


def test_tenant_weights_parse_and_refuse_nonsense() -> None:
    assert parse_tenant_weights("tenant-a=1, tenant-b=3,") == {"tenant-a": 1.0, "tenant-b": 3.0}
    assert parse_tenant_weights("") == {}
    for bad in ("tenant-a", "tenant-a=0", "tenant-a=-2", "=3", "tenant-a=lots"):
        with pytest.raises(ValueError, match="TENANT=WEIGHT"):
            parse_tenant_weights(bad)


@dataclass
class FakePool:
    """Workers that generate `tokens_per_step` tokens per running request per step,
    and tenants that always have requests waiting."""

    policy: FairPolicy
    num_workers: int = 4
    max_num_seqs: int = 4
    tokens_per_step: int = 4
    max_tokens: dict[str, int] = field(default_factory=dict)  # tenant -> its requests' length
    running: dict[str, RunningRequest] = field(default_factory=dict)
    pending: dict[str, PendingRequest] = field(default_factory=dict)
    tokens: Counter = field(default_factory=Counter)  # tenant -> tokens generated
    mixes: list[Counter] = field(default_factory=list)  # per step: tenant -> requests running
    _ids: itertools.count = field(default_factory=itertools.count)

    def refill(self, tenants: list[str], backlog: int = 20) -> None:
        for tenant in tenants:
            while sum(r.tenant == tenant for r in self.pending.values()) < backlog:
                seq = next(self._ids)
                request = make_request(
                    f"{tenant}-{seq}", arrival_seq=seq, tenant=tenant, max_tokens=self.max_tokens[tenant]
                )
                self.pending[request.request_id] = request

    def step(self, tenants: list[str]) -> None:
        self.refill(tenants)
        workers = [
            make_worker(f"w{i}", num_running=self.num_running(f"w{i}"), max_num_seqs=self.max_num_seqs)
            for i in range(self.num_workers)
        ]
        decision = self.policy.schedule(list(self.pending.values()), list(self.running.values()), workers)
        for placement in decision.placements:
            request = self.pending.pop(placement.request_id)
            self.running[request.request_id] = make_running(
                request.request_id, placement.worker_id, tenant=request.tenant, max_tokens=request.max_tokens
            )
        self.mixes.append(Counter(request.tenant for request in self.running.values()))
        for request_id, request in list(self.running.items()):
            generated = min(request.max_tokens, request.generated_tokens + self.tokens_per_step)
            self.tokens[request.tenant] += generated - request.generated_tokens
            if generated == request.max_tokens:
                del self.running[request_id]  # finished: the policy never sees its last tokens
            else:
                self.running[request_id] = RunningRequest(
                    request_id,
                    request.worker_id,
                    tenant=request.tenant,
                    generated_tokens=generated,
                    max_tokens=request.max_tokens,
                )

    def num_running(self, worker_id: str) -> int:
        return sum(r.worker_id == worker_id for r in self.running.values())


def test_token_shares_converge_to_the_weights() -> None:
    # a's requests are 3x longer than b's: counting requests instead of tokens would fail
    pool = FakePool(
        make_policy("fair", tenant_weights="tenant-a=1,tenant-b=3"),
        max_tokens={"tenant-a": 48, "tenant-b": 16},
    )
    for _ in range(400):
        pool.step(["tenant-a", "tenant-b"])
    ratio = pool.tokens["tenant-b"] / pool.tokens["tenant-a"]
    assert 2.7 <= ratio <= 3.3, pool.tokens


def test_the_running_mix_holds_the_weights_step_by_step() -> None:
    """Placements charge their expected tokens at once: a tenant behind does not take
    every freed slot until its new requests' tokens show up (the share would swing)."""
    pool = FakePool(
        make_policy("fair", tenant_weights="tenant-a=1,tenant-b=3"),
        max_tokens={"tenant-a": 12, "tenant-b": 20},
    )
    for _ in range(60):
        pool.step(["tenant-a", "tenant-b"])
    assert all(sum(mix.values()) == 16 for mix in pool.mixes)  # every slot busy every step
    # of 16 slots, a's weight is 4 (every request makes 4 tokens a step)
    tenant_a_slots = [mix["tenant-a"] for mix in pool.mixes]
    assert set(tenant_a_slots[10:]) <= {3, 4, 5}, tenant_a_slots


def test_what_a_request_did_not_make_is_given_back() -> None:
    """Charged its max_tokens when placed, a request that stops early is refunded."""
    policy = make_policy("fair")
    schedule(policy, [make_request("r", tenant="t", max_tokens=100)], [make_worker("w1")])
    assert policy.virtual_tokens[(0, "t")] == 100
    running = [make_running("r", "w1", tenant="t", generated_tokens=5, max_tokens=100)]
    schedule(policy, [], [make_worker("w1", num_running=1)], running)
    running[0].generated_tokens = 10
    schedule(policy, [], [make_worker("w1", num_running=1)], running)
    schedule(policy, [], [make_worker("w1")], [])  # it ended (at EOS) after its last report
    assert policy.virtual_tokens[(0, "t")] == 15  # 10 seen, then a last stretch as long as 5


def test_a_request_on_its_last_token_is_settled_from_its_latest_count() -> None:
    """Out of `running` once on its last token (its slot is as good as free), a request
    still counts its tokens in `leaving`: it made all it was charged, so no refund.
    Settled from a count two asks old, it would have been refunded 10 of its 32."""
    policy = FairPolicy()
    schedule(policy, [make_request("r", tenant="t", max_tokens=32)], [make_worker("w1")])
    running = [make_running("r", "w1", tenant="t", generated_tokens=20, max_tokens=32)]
    schedule(policy, [], [make_worker("w1", num_running=1)], running)
    running[0].generated_tokens = 21
    schedule(policy, [], [make_worker("w1", num_running=1)], running)
    running[0].generated_tokens = 31
    policy.schedule([], [], [make_worker("w1")], leaving=running)  # on its last token
    policy.schedule([], [], [make_worker("w1")])  # then it ended
    assert policy.virtual_tokens[(0, "t")] == 32


def test_unknown_tenants_weigh_one_and_share_equally() -> None:
    pool = FakePool(make_policy("fair", tenant_weights="vip=5"), max_tokens={"x": 32, "y": 8})
    for _ in range(300):
        pool.step(["x", "y"])
    assert 0.9 <= pool.tokens["x"] / pool.tokens["y"] <= 1.1, pool.tokens


def test_a_tenant_back_from_idling_banks_no_credit() -> None:
    pool = FakePool(
        make_policy("fair", tenant_weights="tenant-a=1,tenant-b=1"),
        max_tokens={"tenant-a": 16, "tenant-b": 16},
    )
    for _ in range(100):
        pool.step(["tenant-b"])  # a is idle: without lifting it would then get every slot
    counters = pool.policy.virtual_tokens
    pool.tokens.clear()
    pool.step(["tenant-a", "tenant-b"])
    assert counters[(0, "tenant-a")] >= counters[(0, "tenant-b")] - 16 * 16
    for _ in range(100):
        pool.step(["tenant-a", "tenant-b"])
    assert 0.85 <= pool.tokens["tenant-a"] / pool.tokens["tenant-b"] <= 1.15, pool.tokens


def test_free_slots_of_one_batch_are_shared_by_weight() -> None:
    pending = [
        make_request(f"{tenant}-{i}", arrival_seq=i, tenant=tenant, max_tokens=16)
        for tenant in ("a", "b")
        for i in range(10)
    ]
    decision = schedule(
        make_policy("fair", tenant_weights="a=1,b=3"), pending, [make_worker("w1", max_num_seqs=8)]
    )
    assert Counter(request_id[0] for request_id in placed_ids(decision)) == {"a": 2, "b": 6}


def test_tiers_stay_strict_whatever_the_shares() -> None:
    policy = make_policy("fair", tenant_weights="heavy=100")
    running = [make_running("inter-old", "w0", tier_rank=0, tenant="heavy", generated_tokens=10**5)]
    pending = [
        make_request("batch-light", tier_rank=1, arrival_seq=0, tenant="light"),
        make_request("inter-heavy", tier_rank=0, arrival_seq=1, tenant="heavy"),
    ]
    decision = schedule(policy, pending, [make_worker("w1", max_num_seqs=1)], running)
    assert placed_ids(decision) == ["inter-heavy"]


def test_a_higher_tier_takes_the_slot_of_the_lowest_most_recently_started_request() -> None:
    """Shares are kept within a tier; across tiers, fair preempts as priority does."""
    policy = make_policy("fair")
    workers = [make_worker(w, num_running=1, max_num_seqs=1) for w in ("w-std", "w-old", "w-new")]
    running = [
        make_running("standard", "w-std", tier_rank=1, tenant="a", running_s=0.5),
        make_running("batch-old", "w-old", tier_rank=2, tenant="a", running_s=30.0),
        make_running("batch-new", "w-new", tier_rank=2, tenant="a", running_s=1.0),
    ]
    decision = schedule(
        policy, [make_request("inter", tier_rank=0, tenant="b", max_tokens=8)], workers, running
    )
    assert [(p.request_id, p.worker_id) for p in decision.preemptions] == [("batch-new", "w-new")]
    assert placed_ids(decision) == ["inter"] and policy.virtual_tokens[(0, "b")] == 8


def test_within_a_tier_no_share_is_worth_a_preemption() -> None:
    policy = make_policy("fair", tenant_weights="behind=100")
    running = [make_running("ahead-0", "w1", tier_rank=1, tenant="ahead", generated_tokens=500)]
    decision = schedule(
        policy,
        [make_request("behind-0", tier_rank=1, tenant="behind")],
        [make_worker("w1", num_running=1, max_num_seqs=1)],
        running,
    )
    assert decision.preemptions == [] and decision.placements == []


def test_a_preempted_request_resumes_without_a_second_charge() -> None:
    policy = make_policy("fair")
    schedule(
        policy,
        [make_request("batch", tier_rank=1, tenant="t", max_tokens=100)],
        [make_worker("w1", max_num_seqs=1)],
    )
    running = [make_running("batch", "w1", tier_rank=1, tenant="t", generated_tokens=10, max_tokens=100)]
    decision = schedule(
        policy,
        [make_request("inter", tier_rank=0, tenant="u", max_tokens=8)],
        [make_worker("w1", num_running=1, max_num_seqs=1)],
        running,
    )
    assert [p.request_id for p in decision.preemptions] == ["batch"]
    resumed = make_request("batch", tier_rank=1, tenant="t", max_tokens=100, generated_tokens=10)
    decision = schedule(policy, [resumed], [make_worker("w1", max_num_seqs=1)])
    assert placed_ids(decision) == ["batch"] and policy.virtual_tokens[(1, "t")] == 100


def test_within_a_tenant_earliest_deadline_then_arrival() -> None:
    pending = [
        make_request("first", arrival_seq=0, tenant="t"),
        make_request("urgent", arrival_seq=1, tenant="t", deadline_in_s=1.0),
    ]
    decision = schedule("fair", pending, [make_worker("w1")])
    assert placed_ids(decision) == ["urgent", "first"]
