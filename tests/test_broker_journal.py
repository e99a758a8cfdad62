"""The broker's journal through real processes: a SIGKILLed broker restarts and finishes
what it accepted; a client's resend (the request id is the idempotency key) attaches to
the accepted request and streams on from the tokens it holds, never a second answer."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import zmq
from service_process import dealer, receive, wait_until

from broker.journal import Journal
from llmos.wire import pack, pb
from llmos.wire.constants import DEFAULT_TENANT
from llmos_bench.stack import SimStack
from workers.sim import LatencyProfile

pytestmark = pytest.mark.e2e

# 20 ms a step whatever the batch: 150 tokens take 3 s, long enough to kill the
# broker mid-answer; a simulated answer runs to its max_tokens
PROFILE = LatencyProfile(base_ms=20.0, per_seq_ms=0.0, per_prefill_token_ms=0.0, per_context_token_us=0.0)
MAX_TOKENS = 150
CLIENT_REPLIES = {"accepted", "chunk", "result", "error"}


class JournalStack(SimStack):
    """Kernel, scheduler, a broker with its journal in `log_dir`, one simulated worker."""

    def __init__(self, log_dir: Path, *broker_args: str) -> None:
        super().__init__(log_dir, num_workers=1, max_num_seqs=16, profile=PROFILE)
        self.group.env["LLMOS_HEARTBEAT_INTERVAL_MS"] = "200"  # the worker finds a new broker soon
        self.broker_args = broker_args
        self.num_broker_starts = 1

    def start_services(self) -> None:
        self.start_kernel()
        self.start_scheduler()
        self.start_broker(*self.broker_args)

    def kill_and_restart_broker(self) -> None:
        """SIGKILL the broker, start a new one on the same journal and ports."""
        process = self.processes.pop("broker")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        self.processes[f"killed-broker-{self.num_broker_starts}"] = process
        self.num_broker_starts += 1
        self.start_broker(*self.broker_args)
        self.wait_ready()

    def check_alive(self, ignore: tuple[str, ...] = ()) -> None:
        super().check_alive((*ignore, "killed"))


class RawClient:
    """A client on a raw DEALER: what it sends and, per request id, what it received."""

    def __init__(self, socket: zmq.Socket) -> None:
        self.socket = socket
        self.chunks: dict[str, list[pb.TokenChunk]] = {}
        self.results: dict[str, pb.GenerateResult] = {}

    def submit(
        self,
        request_id: str,
        is_resend: bool = False,
        resume_from_index: int = 0,
        is_final_only: bool = False,
    ) -> None:
        self.socket.send(
            pack(
                pb.GenerateRequest(
                    request_id=request_id,
                    prompt=f"tell me a story, {request_id}",
                    sampling=pb.SamplingParams(max_tokens=MAX_TOKENS),
                    tier="batch",
                    is_resend=is_resend,
                    resume_from_index=resume_from_index,
                    is_final_only=is_final_only,
                )
            )
        )

    def receive(self) -> tuple[str, pb.Accepted | pb.TokenChunk | pb.GenerateResult | pb.Error]:
        name, message = receive(self.socket, CLIENT_REPLIES)
        if name == "chunk":
            self.chunks.setdefault(message.request_id, []).append(message)
        elif name == "result":
            self.results[message.request_id] = message
        return name, message  # type: ignore[return-value]

    def expect(self, expected_name: str) -> pb.Accepted | pb.TokenChunk | pb.GenerateResult | pb.Error:
        name, message = self.receive()
        assert name == expected_name, (name, message)
        return message

    def receive_until_result(self, request_id: str) -> pb.GenerateResult:
        while request_id not in self.results:
            name, message = self.receive()
            assert name != "error", message
        return self.results[request_id]

    def token_ids(self, request_id: str) -> list[int]:
        """The tokens streamed for the request, checking each chunk starts where the
        last one ended: no token twice, none missing."""
        token_ids: list[int] = []
        for chunk in self.chunks.get(request_id, []):
            assert chunk.index == len(token_ids), (request_id, chunk.index, len(token_ids))
            token_ids.extend(chunk.token_ids)
        return token_ids


def undisturbed_answer(stack: JournalStack) -> pb.GenerateResult:
    with dealer(stack.broker_address) as socket:
        client = RawClient(socket)
        client.submit("undisturbed")
        client.expect("accepted")
        result = client.receive_until_result("undisturbed")
    assert client.token_ids("undisturbed") == list(result.token_ids)
    assert len(result.token_ids) == MAX_TOKENS
    return result


def stream_partly(client: RawClient, request_ids: list[str], min_tokens: int) -> None:
    """Submit every request and read until each has `min_tokens` tokens (and none finished)."""
    for request_id in request_ids:
        client.submit(request_id)
    while any(len(client.token_ids(r)) < min_tokens for r in request_ids):
        client.receive()
    assert client.results == {}, "an answer finished before the broker was killed"


def status(stack: JournalStack) -> pb.StatusReply:
    return stack.status(timeout_s=10.0)


def test_after_a_sigkill_the_restarted_broker_finishes_every_accepted_request(tmp_path):
    request_ids = [f"req-{i}" for i in range(10)]
    with JournalStack(tmp_path) as stack:
        undisturbed = undisturbed_answer(stack)
        with dealer(stack.broker_address) as socket:
            stream_partly(RawClient(socket), request_ids, min_tokens=3)
            stack.kill_and_restart_broker()  # while the client is connected: no disconnect cancels
        assert status(stack).num_journalled == 10

        # no client comes back: the restarted broker finishes them all
        wait_until(lambda: status(stack).num_journalled == 0, "every journalled request finished", 60)
        assert status(stack).num_completed == 10

        with dealer(stack.broker_address) as socket:
            late = RawClient(socket)
            for request_id in request_ids:
                late.submit(request_id, is_resend=True)
                late.expect("accepted")
                late.expect("chunk")  # every token, from index 0
                result = late.expect("result")
                assert late.token_ids(request_id) == list(result.token_ids) == list(undisturbed.token_ids)
                assert result.text == undisturbed.text
                assert result.finish_reason == pb.FINISH_REASON_LENGTH
        assert status(stack).num_completed == 10, "a kept answer is resent, not made again"

    journal = Journal(str(stack.journal_path))
    assert journal.live() == []
    assert all(journal.finished((DEFAULT_TENANT, r)) is not None for r in request_ids)


def test_a_final_only_request_journals_no_token_and_runs_again_after_a_restart(tmp_path):
    with JournalStack(tmp_path) as stack:
        undisturbed = undisturbed_answer(stack)
        with dealer(stack.broker_address) as socket:
            client = RawClient(socket)
            client.submit("whole", is_final_only=True)
            stream_partly(client, ["streamed"], min_tokens=3)  # "whole" runs beside it
            stack.kill_and_restart_broker()
        wait_until(lambda: status(stack).num_journalled == 0, "every journalled request finished", 60)

        with dealer(stack.broker_address) as socket:
            late = RawClient(socket)
            late.submit("whole", is_resend=True, is_final_only=True)
            late.expect("accepted")
            result = late.expect("result")  # no catch-up chunk: it had none
        assert list(result.token_ids) == list(undisturbed.token_ids)
        assert late.chunks == {} and client.chunks.keys() == {"streamed"}

    journal = Journal(str(stack.journal_path))
    assert journal.finished((DEFAULT_TENANT, "whole")).chunks == []
    assert journal.finished((DEFAULT_TENANT, "streamed")).chunks != []


def test_a_resend_after_a_restart_streams_on_from_the_tokens_the_client_holds(tmp_path):
    request_ids = ["story-a", "story-b"]
    with JournalStack(tmp_path) as stack:
        undisturbed = undisturbed_answer(stack)
        with dealer(stack.broker_address) as socket:
            before = RawClient(socket)
            stream_partly(before, request_ids, min_tokens=5)
            stack.kill_and_restart_broker()
        with dealer(stack.broker_address) as socket:
            after = RawClient(socket)
            for request_id in request_ids:
                held = len(before.token_ids(request_id))
                after.submit(request_id, is_resend=True, resume_from_index=held)
            for request_id in request_ids:
                after.receive_until_result(request_id)

    for request_id in request_ids:
        held = before.token_ids(request_id)
        resumed = after.chunks[request_id]
        assert resumed[0].index == len(held)
        tokens = held + [token for chunk in resumed for token in chunk.token_ids]
        assert tokens == list(undisturbed.token_ids)  # whole, and no token twice
        assert list(after.results[request_id].token_ids) == list(undisturbed.token_ids)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with JournalStack(tmp_path_factory.mktemp("journal-stack"), "--result-ttl-s", "2") as stack:
        yield stack


def test_a_resend_of_a_live_request_attaches_and_makes_no_second_answer(stack):
    completed_before = status(stack).num_completed
    with dealer(stack.broker_address) as first_socket, dealer(stack.broker_address) as second_socket:
        first, second = RawClient(first_socket), RawClient(second_socket)
        stream_partly(first, ["live"], min_tokens=3)

        # another connection of the same tenant may not start a second one under that id
        second.submit("live")
        error = second.expect("error")
        assert error.code == pb.DUPLICATE_REQUEST

        held = len(first.token_ids("live"))
        second.submit("live", is_resend=True, resume_from_index=held)
        second.expect("accepted")
        first_socket.close(linger=0)  # the old connection leaves: the request goes on
        result = second.receive_until_result("live")

    resumed = second.chunks["live"]
    assert resumed[0].index == held
    tokens = first.token_ids("live") + [token for chunk in resumed for token in chunk.token_ids]
    assert tokens == list(result.token_ids) and len(tokens) == MAX_TOKENS
    assert result.num_restarts == 0
    assert status(stack).num_completed == completed_before + 1, "one answer, not two"


def test_a_resend_of_an_unknown_request_is_admitted_as_a_new_one(stack):
    completed_before = status(stack).num_completed
    with dealer(stack.broker_address) as socket:
        client = RawClient(socket)
        # the broker that died never journalled it, so the client never got Accepted
        client.submit("never-seen", is_resend=True, resume_from_index=0)
        client.expect("accepted")
        result = client.receive_until_result("never-seen")
    assert client.token_ids("never-seen") == list(result.token_ids)
    assert len(result.token_ids) == MAX_TOKENS
    assert status(stack).num_completed == completed_before + 1


def test_a_finished_answer_is_kept_for_result_ttl_s_then_forgotten(stack):
    with dealer(stack.broker_address) as socket:
        client = RawClient(socket)
        client.submit("kept")
        client.expect("accepted")
        answer = client.receive_until_result("kept")

        # within result_ttl_s: the kept answer, no new tokens (the client holds them all)
        client.submit("kept", is_resend=True, resume_from_index=MAX_TOKENS)
        client.expect("accepted")
        assert client.expect("result") == answer

        def is_forgotten() -> bool:
            client.submit("kept", is_resend=True, resume_from_index=MAX_TOKENS)
            client.expect("accepted")
            name, message = client.receive()
            if name == "result":
                return False  # still kept
            assert (name, message.index) == ("chunk", 0)  # a new answer from its first token
            client.receive_until_result("kept")
            return True

        wait_until(is_forgotten, "the kept answer expired", timeout_s=30)
