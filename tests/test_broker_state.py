"""What the broker holds from its peers is checked and bounded, and expires: worker
registrations, the models workers claim, the names in client requests, per-tenant
state (plain data, no sockets; tests/test_broker_hostile.py drives a real broker)."""

from __future__ import annotations

import pytest
from policy_helpers import make_request, make_worker, schedule

from broker.admission import ModelView, validate_generate, validate_pooling
from broker.config import BrokerConfig
from broker.queues import TieredQueue
from broker.request_table import RequestTable
from broker.tiers import parse_tier_limits
from broker.worker_checks import check_register
from broker.worker_pool import WorkerPool
from llmos.wire import WireError, pb
from scheduler_svc.policy_fair import MAX_IDLE_COUNTERS, FairPolicy

GENERATE = pb.TASK_KIND_GENERATE


def register(worker_id: str = "w1", models=("tiny",), **fields) -> pb.WorkerRegister:
    fields.setdefault("max_num_seqs", 4)
    fields.setdefault("heartbeat_interval_ms", 100)
    return pb.WorkerRegister(worker_id=worker_id, models=list(models), **fields)


def register_refusal(message: pb.WorkerRegister, identity: bytes = b"w1", holder: bytes | None = None) -> str:
    with pytest.raises(WireError) as refused:
        check_register(message, identity, holder)
    assert refused.value.code == pb.INVALID_ARGUMENT
    return refused.value.message


def test_a_sound_registration_passes():
    check_register(register(max_model_len=2048, kv_blocks_total=100, block_size=16), b"w1", None)
    check_register(register(), b"w1", b"w1")  # the same connection registering again


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (register(worker_id=""), "worker_id is empty"),
        (register(worker_id="w" * 129), "worker_id is 129 bytes"),
        (register(worker_id="w\n1"), "not printable"),
        (register(models=()), "the number of models is 0"),
        (register(models=[f"m{i}" for i in range(65)]), "the number of models is 65"),
        (register(models=["x" * 257]), "is 257 bytes"),
        (register(models=["bad\x00name"]), "not printable"),
        (register(max_num_seqs=0), "max_num_seqs is 0"),
        (register(max_num_seqs=4097), "max_num_seqs is 4097"),
        (register(heartbeat_interval_ms=600_000), "heartbeat_interval_ms"),
        (register(kv_blocks_total=2**31), "kv_blocks_total"),
        (register(block_size=2**17), "block_size"),
        (register(max_model_len=2**24 + 1), "max_model_len"),
        (register(task=7), "task 7"),
    ],
)
def test_a_registration_past_any_bound_is_refused(message, why):
    identity = message.worker_id.encode() if message.worker_id.isprintable() else b"w1"
    assert why in register_refusal(message, identity or b"w1")


def test_a_worker_speaks_only_for_its_own_connection():
    assert "connection's identity" in register_refusal(register("w2"), identity=b"w1")
    assert "another live connection" in register_refusal(register("w1"), identity=b"w1", holder=b"w9")


def test_a_model_is_taken_during_its_grace_then_forgotten():
    pool = WorkerPool(default_heartbeat_interval_s=1.0, model_grace_s=5.0)
    pool.require_worker(b"w1", register("w1", models=("tiny",)), now_s=0.0)
    pool.require_worker(b"p1", register("p1", models=("aaa",)), now_s=0.0)
    pool.delete_worker(b"p1", now_s=1.0)
    assert pool.models_by_task == {GENERATE: {"tiny", "aaa"}}
    assert pool.serving_by_task == {GENERATE: {"tiny"}}
    assert pool.purge_models(now_s=5.9) == []
    assert pool.purge_models(now_s=6.0) == [(GENERATE, "aaa")]
    assert pool.models_by_task == {GENERATE: {"tiny"}}


def test_a_worker_back_within_the_grace_keeps_its_model():
    pool = WorkerPool(default_heartbeat_interval_s=1.0, model_grace_s=5.0)
    pool.require_worker(b"w1", register("w1"), now_s=0.0)
    assert [w.worker_id for w in pool.purge_expired(now_s=1.0)] == ["w1"]  # 3 x 100 ms silent
    pool.require_worker(b"w1", register("w1"), now_s=2.0)
    assert pool.purge_models(now_s=100.0) == []
    assert pool.models_by_task == {GENERATE: {"tiny"}}


def make_generate(**fields) -> pb.GenerateRequest:
    fields.setdefault("request_id", "r1")
    fields.setdefault("prompt", "hello")
    return pb.GenerateRequest(**fields)


def admit(request: pb.GenerateRequest, models, config: BrokerConfig | None = None):
    config = config or BrokerConfig()
    return validate_generate(request, config, parse_tier_limits(config), models)


def refusal_code(request: pb.GenerateRequest, models, config: BrokerConfig | None = None) -> int:
    with pytest.raises(WireError) as refused:
        admit(request, models, config)
    return refused.value.code


def test_the_default_model_is_one_served_now_before_one_in_grace():
    view = ModelView(accepted={GENERATE: {"aaa", "tiny"}}, serving={GENERATE: {"tiny"}})
    assert admit(make_generate(), view).model == "tiny"
    assert admit(make_generate(model="aaa"), view).model == "aaa"  # still taken in its grace
    grace_only = ModelView(accepted={GENERATE: {"aaa"}}, serving={})
    assert admit(make_generate(), grace_only).model == "aaa"


@pytest.mark.parametrize(
    "request_fields",
    [
        {"tenant": "t" * 65},
        {"tenant": "tab\there"},
        {"model": "m" * 257},
        {"request_id": "r" * 129},
        {"request_id": "r\x07"},
        {"request_id": ""},
    ],
)
def test_names_in_a_request_are_bounded_and_printable(request_fields):
    assert refusal_code(make_generate(**request_fields), {GENERATE: {"tiny"}}) == pb.INVALID_ARGUMENT


def test_names_at_their_bounds_are_taken():
    admitted = admit(make_generate(request_id="r" * 128, tenant="é" * 32), {GENERATE: {"tiny"}})
    assert (admitted.request_id, admitted.tenant) == ("r" * 128, "é" * 32)


def test_a_prompt_longer_than_the_models_context_by_bytes_is_too_large():
    view = ModelView({GENERATE: {"tiny"}}, {GENERATE: {"tiny"}}, {(GENERATE, "tiny"): 100})
    assert admit(make_generate(prompt="x" * 800), view).prompt == "x" * 800  # 100 tokens x 8 bytes
    assert refusal_code(make_generate(prompt="x" * 801), view) == pb.TOO_LARGE
    config = BrokerConfig(max_prompt_bytes_per_token=4)
    assert refusal_code(make_generate(prompt="x" * 401), view, config) == pb.TOO_LARGE
    unknown = ModelView({GENERATE: {"tiny"}}, {GENERATE: {"tiny"}}, {(GENERATE, "tiny"): 0})
    assert admit(make_generate(prompt="x" * 100_000), unknown).model == "tiny"


def test_each_pooling_input_is_held_to_the_models_context():
    embed = pb.TASK_KIND_EMBED
    view = ModelView({embed: {"e"}}, {embed: {"e"}}, {(embed, "e"): 10})
    config = BrokerConfig()
    request = pb.EmbedRequest(request_id="r", inputs=["x" * 80, "y" * 80])
    assert validate_pooling(request, embed, config, parse_tier_limits(config), view).inputs[1] == "y" * 80
    request.inputs.append("z" * 81)
    with pytest.raises(WireError) as refused:
        validate_pooling(request, embed, config, parse_tier_limits(config), view)
    assert refused.value.code == pb.TOO_LARGE


def test_a_tenant_with_nothing_live_leaves_no_count_behind():
    config = BrokerConfig()
    table = RequestTable(TieredQueue(config.tier_names, {t: 10 for t in config.tier_names}))
    request, _ = table.add(b"c", False, admit(make_generate(tenant="alice"), {GENERATE: {"tiny"}}), 0.0)
    assert table.num_live("alice") == 1
    assert table.end(request)
    assert table.num_live("alice") == 0 and "alice" not in table._num_live_by_tenant


def test_the_fair_fallback_keeps_a_bounded_number_of_idle_tenants():
    policy = FairPolicy()
    num_tenants = MAX_IDLE_COUNTERS + 50
    for i in range(num_tenants):  # each tenant sends one request, which ends by the next ask
        schedule(
            policy, [make_request(f"r{i}", tenant=f"tenant-{i}", max_tokens=1 + i % 7)], [make_worker("w")]
        )
    schedule(policy, [], [make_worker("w")])
    assert len(policy.virtual_tokens) == MAX_IDLE_COUNTERS
    # the lowest counters went first
    assert min(policy.virtual_tokens.values()) >= 1
