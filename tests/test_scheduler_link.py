"""The broker's line to the scheduler: slow answers, offline, and back."""

import zmq

from broker.scheduler_link import TIMEOUTS_BEFORE_OFFLINE, UNREAD_GRACE_TIMEOUTS, SchedulerLink
from llmos.processes import free_address
from llmos.wire import pack, pb, unpack


def make_link(address: str = "") -> SchedulerLink:
    return SchedulerLink(
        zmq.Context.instance(),
        address or free_address(),
        timeout_ms=250,
        retry_ms=2000,
        fallback_policy="fair",
        tenant_weights="a=1,b=3",
    )


def test_one_slow_batch_is_decided_locally_but_only_repeated_timeouts_go_offline():
    link = make_link()
    try:
        for _ in range(TIMEOUTS_BEFORE_OFFLINE - 1):
            link.time_out(now_s=10.0)
            assert link.is_online and not link.is_waiting and link.can_ask(now_s=10.0)
        link.time_out(now_s=10.0)
        assert not link.is_online
        assert not link.can_ask(now_s=11.0) and link.can_ask(now_s=12.0)  # retry after 2 s
    finally:
        link.close()


def test_with_no_scheduler_listening_a_batch_cannot_be_sent_and_the_fallback_decides():
    link = make_link()
    try:
        request = pb.ScheduleRequest(
            pending=[pb.PendingRequest(request_id="r1", model="m", tenant="a", max_tokens=4)],
            workers=[pb.WorkerSlots(worker_id="w1", models=["m"], max_num_seqs=2)],
        )
        assert not link.ask(request, now_s=0.0)
        assert not link.is_online
        decision = link.decide_locally(request)
        assert [(p.request_id, p.worker_id) for p in decision.placements] == [("r1", "w1")]
        assert decision.policy == "fair"
    finally:
        link.close()


def test_an_answer_waiting_unread_in_the_socket_is_no_timeout():
    """Under load one turn of the broker's loop can outlast the timeout while the
    scheduler's answer waits in the socket: that batch was answered in time."""
    scheduler = zmq.Context.instance().socket(zmq.ROUTER)
    address = free_address()
    scheduler.bind(address)
    link = make_link(address)
    try:
        assert link.socket.poll(5000, zmq.POLLOUT), "the link never connected"
        assert link.ask(pb.ScheduleRequest(), now_s=0.0)
        assert scheduler.poll(5000)
        identity, payload = scheduler.recv_multipart()
        _, asked = unpack(payload, frozenset({"schedule_request"}))
        scheduler.send_multipart(
            [identity, pack(pb.ScheduleDecision(batch_id=asked.batch_id, policy="mlfq"))]
        )
        assert link.socket.poll(5000)  # the answer is in, not yet read

        assert not link.is_timed_out(now_s=0.3)  # past the 250 ms timeout
        assert link.is_timed_out(now_s=UNREAD_GRACE_TIMEOUTS * 0.25)  # a bounded grace
        decision = link.receive()
        assert decision is not None and decision.batch_id == asked.batch_id
        assert link.is_online and not link.is_waiting and link.policy_name == "mlfq"

        assert link.ask(pb.ScheduleRequest(), now_s=200.0)  # this one gets no answer
        assert not link.is_timed_out(now_s=200.1) and link.is_timed_out(now_s=201.0)
    finally:
        link.close()
        scheduler.close(linger=0)
