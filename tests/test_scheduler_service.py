"""`python -m scheduler_svc` as a real process, with and without a kernel beside it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner, Result
from service_process import ServiceProcess, ask, bad_frames, dealer, running_service, wait_until

from llmos.cli import cli
from llmos.processes import free_address
from llmos.wire import pb
from scheduler_svc.data import MIN_ANSWERS_FOR_FILL

pytestmark = pytest.mark.e2e

BLOCK_SIZE = 16
SCHEDULER_REPLIES = {"schedule_decision", "error"}


@dataclass
class Services:
    scheduler_address: str
    kernel_address: str


@contextmanager
def start_scheduler(log_dir: Path, pub_address: str, *args: str) -> Iterator[tuple[str, ServiceProcess]]:
    address = free_address()
    with running_service(
        "scheduler_svc",
        "--scheduler-bind",
        address,
        "--kernel-pub-address",
        pub_address,
        *args,
        log_dir=log_dir,
    ) as service:
        yield address, service


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    log_dir = tmp_path_factory.mktemp("scheduler")
    kernel_address, pub_address = (free_address() for _ in range(2))
    with running_service(
        "kernel_svc",
        "--kernel-bind",
        kernel_address,
        "--kernel-pub-bind",
        pub_address,
        "--block-size",
        str(BLOCK_SIZE),
        log_dir=log_dir,
    ):
        with start_scheduler(log_dir, pub_address, "--policy", "priority") as (address, _):
            yield Services(address, kernel_address)


@pytest.fixture
def socket(services: Services) -> Iterator[zmq.Socket]:
    with dealer(services.scheduler_address) as socket:
        yield socket


def make_schedule_request(
    batch_id: int, pending: list[tuple[str, int, int]], workers: list[tuple[str, int, int]]
) -> pb.ScheduleRequest:
    """pending: (request id, tier rank, arrival seq); workers: (id, num_running, max_num_seqs)."""
    request = pb.ScheduleRequest(batch_id=batch_id)
    for request_id, tier_rank, arrival_seq in pending:
        request.pending.add(request_id=request_id, tier_rank=tier_rank, arrival_seq=arrival_seq, model="tiny")
    for worker_id, num_running, max_num_seqs in workers:
        request.workers.add(
            worker_id=worker_id, models=["tiny"], num_running=num_running, max_num_seqs=max_num_seqs
        )
    return request


def schedule(socket: zmq.Socket, request: pb.ScheduleRequest) -> pb.ScheduleDecision:
    name, decision = ask(socket, request, SCHEDULER_REPLIES)
    assert name == "schedule_decision", decision
    assert decision.batch_id == request.batch_id
    return decision


def placements(decision: pb.ScheduleDecision) -> list[tuple[str, str]]:
    return [(placement.request_id, placement.worker_id) for placement in decision.placements]


def test_answers_a_batch_with_placements_in_priority_order(socket: zmq.Socket) -> None:
    request = make_schedule_request(
        batch_id=11,
        pending=[("batch-0", 1, 0), ("inter-1", 0, 1), ("batch-2", 1, 2)],
        workers=[("w1", 0, 1), ("w2", 1, 2)],
    )
    decision = schedule(socket, request)
    assert decision.policy == "priority"
    assert placements(decision) == [("inter-1", "w1"), ("batch-0", "w2")]


def test_free_kv_blocks_from_the_kernel_break_ties(services: Services, socket: zmq.Socket) -> None:
    with dealer(services.kernel_address) as kernel:
        for worker_id, num_blocks in (("w-a", 2), ("w-b", 8)):
            name, reply = ask(
                kernel,
                pb.KernelRegister(
                    worker_id=worker_id, models=["tiny"], kv_capacity_tokens=num_blocks * BLOCK_SIZE
                ),
                {"kernel_reply", "error"},
            )
            assert name == "kernel_reply", reply
    # equal load: without the kernel's view w-a wins by id, with it w-b wins by free blocks
    request = make_schedule_request(
        batch_id=12, pending=[("r0", 0, 0)], workers=[("w-a", 0, 1), ("w-b", 0, 1)]
    )
    wait_until(
        lambda: placements(schedule(socket, request)) == [("r0", "w-b")],
        "the scheduler decides with the kernel's view",
    )


BAD_FRAMES = bad_frames(accepted=pb.ScheduleRequest(), refused=pb.ResourceQuery())


@pytest.mark.parametrize("frame, code", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_bad_frames_get_coded_errors_and_the_scheduler_keeps_serving(
    socket: zmq.Socket, frame: bytes, code: int
) -> None:
    name, error = ask(socket, frame, SCHEDULER_REPLIES)
    assert (name, error.code) == ("error", code), error.message
    schedule(socket, make_schedule_request(batch_id=13, pending=[], workers=[]))


def test_schedules_without_a_kernel_and_stops_on_sigterm(tmp_path: Path) -> None:
    nobody_publishes = free_address()
    with start_scheduler(tmp_path, nobody_publishes, "--policy", "fcfs") as (address, scheduler):
        with dealer(address) as socket:
            request = make_schedule_request(
                batch_id=14, pending=[("batch-0", 1, 0), ("inter-1", 0, 1)], workers=[("w1", 0, 2)]
            )
            decision = schedule(socket, request)
        assert decision.policy == "fcfs"
        assert placements(decision) == [("batch-0", "w1"), ("inter-1", "w1")]
        assert scheduler.stop() == 0, scheduler.logs()


# ---------------------------------------------------------------- preemption and policy switching


def set_policy(socket: zmq.Socket, name: str) -> tuple[str, pb.PolicyStatus | pb.Error]:
    return ask(socket, pb.SetPolicy(policy=name), {"policy_status", "error"})


@contextmanager
def policy_restored(socket: zmq.Socket) -> Iterator[None]:
    """The module's scheduler runs `priority`; put it back whatever the test switched to."""
    try:
        yield
    finally:
        assert set_policy(socket, "priority")[0] == "policy_status"


def test_a_higher_tier_request_preempts_a_lower_tier_one_on_a_full_worker(socket: zmq.Socket) -> None:
    request = make_schedule_request(batch_id=15, pending=[("inter-9", 0, 9)], workers=[("w-full", 1, 1)])
    request.running.add(request_id="batch-1", worker_id="w-full", tier_rank=2, generated_tokens=7)
    decision = schedule(socket, request)
    assert [(p.request_id, p.worker_id) for p in decision.preemptions] == [("batch-1", "w-full")]
    assert placements(decision) == [("inter-9", "w-full")]


def test_set_policy_reports_switches_at_runtime_and_refuses_unknown_names(socket: zmq.Socket) -> None:
    name, status = set_policy(socket, "")
    assert name == "policy_status"
    assert (status.policy, list(status.available)) == ("priority", ["fcfs", "priority", "mlfq", "fair"])
    with policy_restored(socket):
        name, status = set_policy(socket, "fcfs")
        assert (name, status.policy) == ("policy_status", "fcfs")
        request = make_schedule_request(
            batch_id=16, pending=[("batch-0", 1, 0), ("inter-1", 0, 1)], workers=[("w1", 0, 1)]
        )
        decision = schedule(socket, request)
        assert decision.policy == "fcfs" and placements(decision) == [("batch-0", "w1")]

        name, error = set_policy(socket, "lottery")
        assert (name, error.code) == ("error", pb.INVALID_ARGUMENT)
        assert "fcfs, priority, mlfq, fair" in error.message
        assert set_policy(socket, "")[1].policy == "fcfs"  # a refused switch changes nothing


def test_llmos_policy_shows_and_switches_the_running_scheduler(
    services: Services, socket: zmq.Socket
) -> None:
    address = ["--scheduler-address", services.scheduler_address]
    with policy_restored(socket):
        shown = invoke("policy", *address)
        assert (shown.exit_code, shown.stdout) == (
            0,
            "policy priority (available: fcfs, priority, mlfq, fair)\n",
        )
        switched = invoke("policy", "mlfq", *address)
        assert (switched.exit_code, switched.stdout.split()[:2]) == (0, ["policy", "mlfq"])
        decision = schedule(socket, make_schedule_request(batch_id=17, pending=[], workers=[]))
        assert decision.policy == "mlfq"
        refused = invoke("policy", "lottery", *address)
        assert refused.exit_code == 2
        assert "INVALID_ARGUMENT: unknown scheduling policy 'lottery'" in refused.stderr


def test_llmos_policy_without_a_scheduler_says_so() -> None:
    nobody = free_address()
    result = invoke("policy", "--scheduler-address", nobody, "--timeout-s", "0.2")
    assert result.exit_code == 4
    assert f"no reply from the scheduler at {nobody}" in result.stderr


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_mlfq_reads_the_tokens_made_since_dispatch_off_the_wire(socket: zmq.Socket) -> None:
    """A surely much longer request yields its slot to a short one, but only once its
    dispatch has made a token: the broker reports `tokens_since_dispatch`."""
    with policy_restored(socket):
        assert set_policy(socket, "mlfq")[1].policy == "mlfq"
        for batch_id, tokens_since_dispatch, expected in [(17, 0, []), (18, 1, [("long", "w1")])]:
            request = make_schedule_request(batch_id, pending=[], workers=[("w1", 1, 1)])
            request.pending.add(
                request_id="short", tier_rank=2, arrival_seq=5, model="tiny", prompt_chars=40, max_tokens=16
            )
            request.running.add(
                request_id="long",
                worker_id="w1",
                tier_rank=2,
                prompt_chars=40,
                generated_tokens=30,
                max_tokens=500,
                running_s=9.0,
                tokens_since_dispatch=tokens_since_dispatch,
            )
            decision = schedule(socket, request)
            assert [(p.request_id, p.worker_id) for p in decision.preemptions] == expected


def test_mlfq_reads_each_tiers_answer_fill_off_the_wire(socket: zmq.Socket) -> None:
    """Where the broker reports that a tier's answers fill their max_tokens (from enough
    answers to mean something), mlfq orders by the bound: the nearly done request first."""

    def first_placed(batch_id: int, num_answers: int, mean_fill: float) -> str:
        request = make_schedule_request(batch_id, pending=[], workers=[("w1", 0, 1)])
        request.pending.add(
            request_id="fresh-long",
            tier="batch",
            tier_rank=2,
            arrival_seq=6,
            model="tiny",
            prompt_chars=40,
            max_tokens=256,
        )
        request.pending.add(
            request_id="nearly-done",
            tier="batch",
            tier_rank=2,
            arrival_seq=5,
            model="tiny",
            prompt_chars=40,
            max_tokens=256,
            generated_tokens=230,
        )
        request.tier_answers.add(tier="batch", num_answers=num_answers, mean_fill=mean_fill)
        return schedule(socket, request).placements[0].request_id

    with policy_restored(socket):
        assert set_policy(socket, "mlfq")[1].policy == "mlfq"
        assert first_placed(21, num_answers=MIN_ANSWERS_FOR_FILL, mean_fill=0.5) == "fresh-long"
        assert first_placed(22, num_answers=MIN_ANSWERS_FOR_FILL - 1, mean_fill=1.0) == "fresh-long"
        assert first_placed(23, num_answers=MIN_ANSWERS_FOR_FILL, mean_fill=1.0) == "nearly-done"
