"""The worker's admission policy: slots and KV blocks, without sockets."""

from __future__ import annotations

import pytest

from workers.admission_gate import AdmissionGate, AllocationStatus
from workers.requests import EngineRequest


def make_admission(max_num_seqs: int = 2, kv_blocks_total: int = 10) -> AdmissionGate:
    return AdmissionGate(
        max_num_seqs=max_num_seqs, max_model_len=64, block_size=16, kv_blocks_total=kv_blocks_total
    )


def add(admission: AdmissionGate, request_id: str, num_tokens: int = 32, num_context_tokens: int = 3) -> None:
    admission.add(EngineRequest(request_id, [1, 2, 3]), num_tokens, num_context_tokens)


def start(admission: AdmissionGate, request_id: str, **sizes: int) -> None:
    add(admission, request_id, **sizes)
    admission.start_allocation(request_id, now_s=0.0)
    admission.grant(request_id)


def test_blocks_cover_the_tokens_and_stop_at_the_context_length():
    admission = make_admission()

    assert admission.blocks_for(1) == 1
    assert admission.blocks_for(33) == 3
    assert admission.blocks_for(5000) == 4  # capped to max_model_len 64
    assert admission.can_ever_fit(5000)
    assert not make_admission(kv_blocks_total=3).can_ever_fit(5000)


def test_requests_ask_in_order_and_several_at_once_where_their_blocks_fit():
    admission = make_admission(max_num_seqs=3)
    add(admission, "a")
    add(admission, "b")
    add(admission, "c")

    assert admission.next_allocation().request.request_id == "a"
    assert admission.start_allocation("a", now_s=1.0) == 2
    assert admission.next_allocation().request.request_id == "b"  # asks beside "a"
    admission.start_allocation("b", now_s=1.0)
    assert admission.next_allocation().request.request_id == "c"
    admission.start_allocation("c", now_s=1.0)
    assert [a.request.request_id for a in admission.asking()] == ["a", "b", "c"]
    assert admission.next_allocation() is None  # every slot is asked for

    assert admission.grant("a").request_id == "a"
    assert admission.in_flight().request.request_id == "b"  # the oldest still asking
    assert admission.num_used_blocks == 2


def test_a_request_behind_allocations_in_flight_asks_only_where_its_blocks_fit_beside_them():
    admission = make_admission(max_num_seqs=4, kv_blocks_total=5)
    add(admission, "a", num_tokens=48)  # 3 blocks
    add(admission, "b", num_tokens=48)  # 3 more: 2 left beside "a"
    add(admission, "c", num_tokens=16)  # 1 block: it would fit, but it is behind "b"
    admission.start_allocation("a", now_s=0.0)

    assert admission.next_allocation() is None
    admission.grant("a")
    admission.release("a")
    assert admission.next_allocation().request.request_id == "b"


def test_the_head_asks_even_where_this_worker_counts_no_room_the_kernel_decides():
    admission = make_admission(kv_blocks_total=5)
    start(admission, "running", num_tokens=48)  # 3 of 5 blocks
    add(admission, "big", num_tokens=48)

    assert admission.next_allocation().request.request_id == "big"


def test_nothing_behind_a_refused_request_asks_but_those_in_flight_may_still_start():
    admission = make_admission(max_num_seqs=3)
    for request_id in ("a", "b", "c"):
        add(admission, request_id)
    admission.start_allocation("a", now_s=0.0)
    admission.start_allocation("b", now_s=0.0)

    admission.refuse("a")
    assert admission.next_allocation() is None  # "c" waits behind "a"
    assert admission.is_asking("b") and admission.in_flight().request.request_id == "b"
    admission.grant("b")  # granted meanwhile: it runs
    admission.release("b")  # frees blocks: "a" asks again, first
    assert admission.next_allocation().request.request_id == "a"


def test_slots_limit_running_requests():
    admission = make_admission(max_num_seqs=1)
    add(admission, "a")
    add(admission, "b")
    admission.start_allocation("a", now_s=0.0)
    admission.grant("a")

    assert admission.next_allocation() is None
    assert admission.release("a") is True
    assert admission.next_allocation().request.request_id == "b"


def test_a_refused_head_waits_until_blocks_are_freed():
    admission = make_admission()
    add(admission, "running")
    admission.start_allocation("running", now_s=0.0)
    admission.grant("running")
    add(admission, "big", num_tokens=64)
    admission.start_allocation("big", now_s=0.0)

    admission.refuse("big")

    assert admission.next_allocation() is None
    admission.release("running")
    assert admission.next_allocation().request.request_id == "big"


def test_local_accounting_checks_free_blocks():
    admission = make_admission(kv_blocks_total=5)
    add(admission, "a", num_tokens=48)  # 3 blocks
    add(admission, "b", num_tokens=48)  # 3 more: only 2 left
    admission.grant("a")

    assert not admission.can_allocate_locally(admission.next_allocation())
    assert admission.num_free_blocks == 2


def test_abandoned_allocations_can_be_retried_in_order():
    admission = make_admission()
    add(admission, "a")
    add(admission, "b")
    admission.start_allocation("a", now_s=0.0)
    admission.start_allocation("b", now_s=0.0)

    assert [a.request.request_id for a in admission.abandon_allocations()] == ["a", "b"]
    assert admission.in_flight() is None
    assert admission.next_allocation().request.request_id == "a"


def test_new_geometry_drops_waiting_requests_that_no_longer_fit():
    admission = make_admission()
    add(admission, "small", num_tokens=16)
    add(admission, "large", num_tokens=64)

    too_large = admission.configure(block_size=16, kv_blocks_total=2)

    assert [r.request_id for r in too_large] == ["large"]
    assert list(admission.waiting) == ["small"]


def test_clear_forgets_everything():
    admission = make_admission()
    add(admission, "a")
    add(admission, "b")
    admission.grant("a")

    assert admission.clear() == ["b", "a"]
    assert admission.num_used_blocks == 0 and not admission.is_live("a")


def test_a_request_on_its_last_token_frees_its_slot_for_the_next_during_the_step():
    admission = make_admission(max_num_seqs=1)
    start(admission, "a", num_tokens=3 + 4)  # 3 prompt tokens, max_tokens 4
    add(admission, "b")

    admission.count_tokens("a", 2)
    assert admission.next_allocation() is None  # 2 tokens left: it stays for the next step
    admission.count_tokens("a", 1)  # the step in flight makes its last token
    assert admission.next_allocation().request.request_id == "b"
    admission.start_allocation("b", now_s=0.0)
    admission.grant("b")
    assert admission.num_running == 2 and admission.num_staying == 1

    add(admission, "c")
    assert admission.next_allocation() is None  # one slot, taken by "b"
    admission.release("a")
    assert admission.num_running == 1 and admission.next_allocation() is None


def test_the_context_length_and_resumed_tokens_count_towards_the_last_token():
    admission = make_admission(max_num_seqs=2)
    start(admission, "long", num_tokens=3 + 1000)  # capped at max_model_len 64
    start(admission, "resumed", num_tokens=3 + 10, num_context_tokens=3 + 7)

    admission.count_tokens("long", 60)  # 3 + 60 = 63 of 64: one more token is the last
    assert admission.leaving == {"long"}
    admission.count_tokens("resumed", 2)  # 7 made before, 2 now: the 10th is the last
    assert admission.leaving == {"long", "resumed"}


def test_a_preempted_request_frees_its_slot_and_leaving_ends_with_release():
    admission = make_admission(max_num_seqs=1)
    start(admission, "a")
    add(admission, "b")
    admission.mark_leaving("unknown")  # not running here: nothing to mark

    admission.mark_leaving("a")
    assert admission.next_allocation().request.request_id == "b"
    admission.release("a")
    assert admission.leaving == set() and admission.tokens_left == {}


def test_an_allocation_moves_only_along_its_transitions():
    admission = make_admission()
    add(admission, "a")
    allocation = admission.next_allocation()
    assert allocation.status is AllocationStatus.QUEUED
    with pytest.raises(AssertionError, match="QUEUED -> REFUSED"):
        admission.refuse("a")  # nothing was asked for yet

    admission.start_allocation("a", now_s=0.0)
    admission.refuse("a")
    assert allocation.status is AllocationStatus.REFUSED and admission.in_flight() is None

    admission.unblock()
    assert admission.next_allocation() is allocation
