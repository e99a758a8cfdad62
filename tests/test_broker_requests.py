"""A request's lifecycle in the broker's request table, and a worker's slots, driven
without sockets: each status change, the indexes kept with it, and the changes
that are refused."""

import pytest

from broker.admission import AdmittedRequest
from broker.queues import TieredQueue
from broker.request_table import RequestTable
from broker.requests import TRANSITIONS, Request, RequestStatus
from broker.worker_pool import ConnectedWorker
from llmos.wire import pb

CLIENT = b"client-1"
TIERS = ["interactive", "standard", "batch"]


def make_table(max_depth: int = 10) -> RequestTable:
    return RequestTable(TieredQueue(TIERS, dict.fromkeys(TIERS, max_depth)))


def make_admitted(
    request_id: str = "c1",
    tier: str = "standard",
    tenant: str = "alice",
    max_tokens: int = 8,
    deadline_ms: int = 0,
) -> AdmittedRequest:
    return AdmittedRequest(
        request_id=request_id,
        kind=pb.TASK_KIND_GENERATE,
        model="tiny",
        tier=tier,
        tenant=tenant,
        deadline_ms=deadline_ms,
        prompt="hi",
        sampling=pb.SamplingParams(max_tokens=max_tokens),
    )


def add(table: RequestTable, request_id: str = "c1", now_s: float = 0.0, **fields) -> Request:
    request, _ = table.add(CLIENT, False, make_admitted(request_id, **fields), now_s)
    return request


def make_worker(max_num_seqs: int = 2) -> ConnectedWorker:
    return ConnectedWorker(
        worker_id="w1",
        identity=b"w1",
        models=frozenset({"tiny"}),
        task=pb.TASK_KIND_GENERATE,
        device="cpu",
        max_num_seqs=max_num_seqs,
        heartbeat_interval_s=1.0,
        expiry_s=3.0,
    )


def test_a_request_is_queued_runs_finishes_is_answered_and_forgotten():
    table = make_table()
    request = add(table)
    assert request.status is RequestStatus.QUEUED and request.request_id in table.queue
    assert table.num_live("alice") == 1 and table.by_client(CLIENT, "c1") is request

    table.start(request, "w1", now_s=1.0)
    assert request.status is RequestStatus.RUNNING and request.worker_id == "w1"
    assert request.request_id not in table.queue and request.dispatched_at_s == 1.0

    request.move_to(RequestStatus.FINISHING)
    assert request.is_leaving and request.is_on_worker and not request.is_answered

    assert table.end(request)
    assert request.status is RequestStatus.ANSWERED and not request.is_leaving
    assert table.num_live("alice") == 0 and table.by_client(CLIENT, "c1") is None
    assert table.get(request.request_id) is request  # the worker still holds it
    assert not table.end(request)  # answered once only

    table.forget(request)
    assert request.status is RequestStatus.DONE and request.worker_id is None
    assert table.get(request.request_id) is None and len(table) == 0


def test_a_queued_request_answered_is_done_at_once():
    table = make_table()
    request = add(table)
    assert table.end(request)
    assert request.status is RequestStatus.DONE
    assert len(table.queue) == 0 and len(table) == 0 and table.num_live("alice") == 0


def test_a_preempted_request_goes_back_to_the_head_of_its_lane_with_its_tokens():
    table = make_table()
    first, second = add(table, "c1"), add(table, "c2")
    table.start(first, "w1", now_s=1.0)
    first.generated_token_ids.extend([5, 6])
    first.move_to(RequestStatus.PREEMPTING)

    table.requeue(first, now_s=2.0)
    assert first.status is RequestStatus.QUEUED and first.worker_id is None
    assert first.queued_since_s == 2.0 and first.generated_token_ids == [5, 6]
    assert list(table.queue.in_order(limit_per_tier=10)) == [first.request_id, second.request_id]
    table.start(first, "w1", now_s=3.0)
    assert first.dispatched_at_s == 1.0 and first.tokens_at_dispatch == 2


@pytest.mark.parametrize(
    ("start", "refused"),
    [
        (RequestStatus.QUEUED, RequestStatus.ANSWERED),
        (RequestStatus.QUEUED, RequestStatus.FINISHING),
        (RequestStatus.FINISHING, RequestStatus.PREEMPTING),
        (RequestStatus.ANSWERED, RequestStatus.QUEUED),
        (RequestStatus.DONE, RequestStatus.QUEUED),
    ],
)
def test_a_change_outside_the_transition_table_is_refused(start, refused):
    assert refused not in TRANSITIONS[start]
    request = add(make_table())
    request.status = start
    with pytest.raises(AssertionError, match=f"from {start.name} to {refused.name}"):
        request.move_to(refused)
    assert request.status is start


def test_each_expired_live_request_comes_back_once_and_answered_ones_are_skipped():
    table = make_table()
    soon = add(table, "c1", deadline_ms=1000)
    answered = add(table, "c2", deadline_ms=500)
    later = add(table, "c3", deadline_ms=5000)
    table.end(answered)
    assert table.next_deadline_s == 0.5
    assert table.next_expired(now_s=2.0) is soon
    assert table.next_expired(now_s=2.0) is None
    assert table.next_expired(now_s=6.0) is later


def test_a_leaving_request_frees_its_slot_for_the_next_dispatch():
    worker = make_worker(max_num_seqs=1)
    worker.take_slot("r1")
    assert not worker.has_capacity
    worker.mark_leaving("r1")
    assert worker.has_capacity and worker.num_busy == 0
    worker.take_slot("r2")
    assert worker.running_ids == {"r1", "r2"} and not worker.has_capacity
    worker.release_slot("r1")
    assert worker.running_ids == {"r2"} and worker.leaving_ids == set()
    asked = pb.ScheduleRequest()
    worker.add_slots(asked.workers)
    assert asked.workers[0].num_running == 1 and worker.status(now_s=0.0).num_running == 1
