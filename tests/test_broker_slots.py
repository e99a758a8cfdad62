"""How the broker hands out a worker's slots, against a real broker process and a
worker driven by hand over its socket (so every step is the test's to take).

A request making its last token leaves at the end of the step in flight, so the
broker dispatches the next request into its slot at once: the worker holds it in
its queue and starts it on the very next step instead of one step later. While
every slot is busy, the broker asks about preemptions now and then; a top-tier
arrival asks at once where lower tiers hold slots.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import zmq
from service_process import REPLY_TIMEOUT_S, ask, dealer, running_service, wait_until

from llmos.processes import free_address
from llmos.wire import pack, pb, unpack
from scheduler_svc.policies import decide, make_policy

pytestmark = pytest.mark.e2e

MODEL = "hand-driven"
WORKER_ID = "w1"
QUIET_S = 0.5  # how long "no dispatch" is watched for
WORKER_MESSAGES = frozenset({"dispatch", "heartbeat", "preempt", "cancel", "disconnect"})


class HandWorker:
    """A worker that registers one slot and makes tokens only when the test says."""

    def __init__(self, socket: zmq.Socket) -> None:
        self.socket = socket
        socket.send(
            pack(
                pb.WorkerRegister(
                    worker_id=WORKER_ID,
                    models=[MODEL],
                    max_num_seqs=1,
                    task=pb.TASK_KIND_GENERATE,
                    heartbeat_interval_ms=60_000,
                )
            )
        )

    def next_message(self, timeout_s: float = REPLY_TIMEOUT_S) -> tuple[str, object] | None:
        """The broker's next message but heartbeats, or None after `timeout_s`."""
        deadline_s = time.monotonic() + timeout_s
        while self.socket.poll(max(0, int((deadline_s - time.monotonic()) * 1000)), zmq.POLLIN):
            name, message = unpack(self.socket.recv_multipart()[-1], WORKER_MESSAGES)
            if name != "heartbeat":
                return name, message
        return None

    def next_dispatch(self, timeout_s: float = REPLY_TIMEOUT_S) -> pb.Dispatch | None:
        received = self.next_message(timeout_s)
        assert received is None or received[0] == "dispatch", received
        return received and received[1]

    def make_token(self, request_id: str, is_last: bool = False) -> None:
        self.socket.send(
            pack(
                pb.StepProgress(
                    worker_id=WORKER_ID,
                    deltas=[
                        pb.RequestDelta(
                            request_id=request_id,
                            token_ids=[7],
                            text=" x",
                            prompt_tokens=3,
                            is_finished=is_last,
                            finish_reason=pb.FINISH_REASON_LENGTH if is_last else 0,
                        )
                    ],
                )
            )
        )


@contextmanager
def broker_with_hand_worker(
    log_dir, *flags: str, scheduler_address: str = ""
) -> Iterator[tuple[HandWorker, zmq.Socket]]:
    """A broker, one hand-driven worker, a client. With no scheduler at
    `scheduler_address` (the default: a free port) the broker decides locally, by `priority`."""
    client_address, worker_address = free_address(), free_address()
    with running_service(
        "broker",
        "--client-bind",
        client_address,
        "--worker-bind",
        worker_address,
        "--scheduler-address",
        scheduler_address or free_address(),
        "--journal",
        str(log_dir / "broker-journal.sqlite3"),
        *flags,
        log_dir=log_dir,
    ):
        with dealer(worker_address, WORKER_ID) as worker_socket, dealer(client_address) as client:
            worker = HandWorker(worker_socket)
            wait_until(lambda: serves_model(client), "the broker has the worker")
            yield worker, client


def serves_model(client: zmq.Socket) -> bool:
    _, status = ask(client, pb.StatusRequest(), {"status_reply"})
    return any(MODEL in worker.models for worker in status.workers)


def submit(client: zmq.Socket, request_id: str, max_tokens: int, tier: str = "") -> None:
    client.send(
        pack(
            pb.GenerateRequest(
                request_id=request_id,
                model=MODEL,
                prompt="hello there",
                sampling=pb.SamplingParams(max_tokens=max_tokens),
                tier=tier,
            )
        )
    )


def test_a_request_on_its_last_token_yields_its_slot_to_the_next(tmp_path):
    with broker_with_hand_worker(tmp_path) as (worker, client):
        submit(client, "a", max_tokens=2)
        first = worker.next_dispatch()
        assert first is not None
        submit(client, "b", max_tokens=2)
        submit(client, "c", max_tokens=2)
        assert worker.next_dispatch(QUIET_S) is None  # one slot, and "a" has 2 tokens to make

        worker.make_token(first.request_id)  # "a" has one token left: its slot frees this step
        second = worker.next_dispatch()
        assert second is not None and second.request_id != first.request_id

        worker.make_token(first.request_id, is_last=True)
        assert worker.next_dispatch(QUIET_S) is None  # "b" holds the slot now

        worker.make_token(second.request_id)
        third = worker.next_dispatch()
        assert third is not None and third.request_id not in (first.request_id, second.request_id)


def test_a_top_tier_arrival_asks_about_preemption_without_waiting_out_the_interval(tmp_path):
    with broker_with_hand_worker(tmp_path, "--preemption-check-ms", "600000") as (worker, client):
        submit(client, "a", max_tokens=50, tier="batch")
        batch = worker.next_dispatch()
        assert batch is not None
        submit(client, "b", max_tokens=50, tier="batch")
        # every slot busy: that arrival's check finds nothing to preempt for its own tier,
        # and the next check is ten minutes away
        assert worker.next_message(QUIET_S) is None

        submit(client, "c", max_tokens=4, tier="interactive")
        name, preempt = worker.next_message()
        assert (name, preempt.request_id) == ("preempt", batch.request_id)
        interactive = worker.next_dispatch()  # into the slot the preemption frees
        assert interactive is not None and interactive.tier == "interactive"


class HandScheduler:
    """A scheduler process's socket driven by the test: it answers each ScheduleRequest
    with the decision of a real policy (`decide`), when the test says."""

    def __init__(self, context: zmq.Context, policy: str) -> None:
        self.socket = context.socket(zmq.ROUTER)
        self.address = free_address()
        self.socket.bind(self.address)
        self.policy = make_policy(policy)

    def answer_next(self) -> pb.ScheduleRequest:
        assert self.socket.poll(int(REPLY_TIMEOUT_S * 1000)), "no ScheduleRequest"
        identity, payload = self.socket.recv_multipart()
        _, request = unpack(payload, {"schedule_request"})
        self.socket.send_multipart([identity, pack(decide(self.policy, request, None))])
        return request

    def is_asked_within(self, timeout_s: float) -> bool:
        return bool(self.socket.poll(int(timeout_s * 1000)))


@contextmanager
def hand_scheduler(policy: str) -> Iterator[HandScheduler]:
    context = zmq.Context()
    scheduler = HandScheduler(context, policy)
    try:
        yield scheduler
    finally:
        scheduler.socket.close(linger=0)
        context.term()


def test_a_request_on_its_last_token_is_listed_as_leaving_not_running(tmp_path):
    """The scheduler (here: the test, answering with `fcfs`'s own decisions) is told a
    finishing request's latest tokens in `leaving`, which `fair` charges tenants by,
    while `running`, the requests a policy may preempt, leaves it out."""
    with (
        hand_scheduler("fcfs") as scheduler,
        broker_with_hand_worker(tmp_path, scheduler_address=scheduler.address) as (worker, client),
    ):
        submit(client, "a", max_tokens=3)
        scheduler.answer_next()
        first = worker.next_dispatch()
        submit(client, "b", max_tokens=3)
        worker.make_token(first.request_id)  # 2 of 3 left: still running
        worker.make_token(first.request_id)  # 1 left: it leaves with the step in flight
        while not (request := scheduler.answer_next()).leaving:
            assert [r.request_id for r in request.running] == [first.request_id]
        assert [(r.request_id, r.generated_tokens) for r in request.leaving] == [(first.request_id, 2)]
        assert list(request.running) == []
        assert worker.next_dispatch() is not None  # "b", into the slot "a" leaves


@pytest.mark.parametrize(
    ("policy", "flags", "is_asked"),
    [
        ("priority", (), False),  # stateless: placed directly
        ("mlfq", (), False),
        ("fair", (), True),  # its counters charge each placement: always asked
        ("priority", ("--no-direct-placement",), True),
    ],
)
def test_a_lone_request_goes_to_the_one_idle_worker_without_asking_the_scheduler(
    tmp_path, policy, flags, is_asked
):
    """The first request asks (the broker learns the scheduler's policy from its answer);
    once that one ended, the next, alone in the queue with the worker idle, is dispatched
    at once under a stateless policy, and asks under `fair` or with direct placement off."""
    with (
        hand_scheduler(policy) as scheduler,
        broker_with_hand_worker(tmp_path, *flags, scheduler_address=scheduler.address) as (worker, client),
    ):
        submit(client, "a", max_tokens=1)
        assert len(scheduler.answer_next().pending) == 1
        first = worker.next_dispatch()
        worker.make_token(first.request_id, is_last=True)
        wait_until(lambda: answer_of(client, "a"), "a's answer")

        submit(client, "b", max_tokens=1)
        if is_asked:
            assert len(scheduler.answer_next().pending) == 1
        second = worker.next_dispatch()
        assert second is not None and second.request_id != first.request_id
        assert not scheduler.is_asked_within(QUIET_S)  # nothing is left to ask about


def answer_of(client: zmq.Socket, request_id: str) -> bool:
    """Whether the client's next message, if any, is the request's final answer."""
    if not client.poll(0):
        return False
    name, message = unpack(client.recv_multipart()[-1], {"accepted", "chunk", "result"})
    return name == "result" and message.request_id == request_id
