"""The load generator of `llmos bench sched`: raw DEALER sockets to the broker, one loop.

It submits open-loop jobs at their arrival times and keeps closed loops topped
up, and times each request on the client side: from its arrival (the time it
was due, so a late send counts against the system, not for it) to its first
chunk (TTFT) and to its result (JCT). Many requests share each connection, so
one process can keep thousands in flight; it uses the wire directly rather
than `llmos.aio` to spend as little CPU per message as it can, since on a
small machine it shares the cores with the stack it measures.

`python -m llmos_bench.driver SPEC_JSON` runs one closed loop in its own process
(the scale workload) and prints a one-line JSON summary.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import zmq

from llmos.security.client_keys import client_curve
from llmos.wire import WireError, pack, pb, unpack
from llmos.wire.constants import ERROR_NAMES
from llmos.wire.envelope import body_names
from llmos.wire.sockets import connect_dealer
from llmos_bench.percentiles import percentile
from llmos_bench.workload import Job, scale_jobs

ACCEPTS = body_names(pb.Accepted, pb.TokenChunk, pb.GenerateResult, pb.Error)
MAX_POLL_WAIT_S = 0.05
STALL_TIMEOUT_S = 30.0  # live requests and not one message for this long: the stack is stuck


@dataclass
class Outcome:
    """One request as the client saw it (time.monotonic seconds)."""

    group: str
    arrival_s: float
    max_tokens: int = 0
    first_token_s: float = math.nan
    finished_s: float = math.nan
    num_tokens: int = 0
    error: str = ""  # the error code's name when the request failed
    answer_tokens: int = 0  # the answer's length, where max_tokens is looser (0: max_tokens)

    @property
    def answer_length(self) -> int:
        return self.answer_tokens or self.max_tokens

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def jct_s(self) -> float:
        return self.finished_s - self.arrival_s

    @property
    def is_done(self) -> bool:
        return math.isfinite(self.finished_s)


@dataclass
class ClosedLoop:
    """Keeps `num_live` requests in flight: as one ends, the next of `jobs` goes out."""

    jobs: Iterator[Job]
    num_live: int
    is_exhausted: bool = False

    def next_job(self) -> Job | None:
        job = next(self.jobs, None)
        self.is_exhausted = job is None
        return job


@dataclass
class RunResult:
    started_s: float
    window_s: float  # arrivals stopped this long after the start
    ended_s: float
    outcomes: list[Outcome]
    chunks: list[tuple[float, str, int]] = field(default_factory=list)  # (time, group, tokens)
    max_send_lag_s: float = 0.0  # worst delay of an open-loop send behind its arrival
    num_unfinished: int = 0  # still live when the drain timed out

    def of(self, group: str) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.group == group]

    def tokens_in_window(self, group: str | None = None) -> int:
        """Tokens that arrived while arrivals were open (the saturated stretch)."""
        end_s = self.started_s + self.window_s
        return sum(
            num_tokens
            for at_s, chunk_group, num_tokens in self.chunks
            if at_s <= end_s and (group is None or chunk_group == group)
        )


class LoadDriver:
    def __init__(
        self, address: str, num_connections: int = 1, track_chunks: bool = True, stream: bool = True
    ) -> None:
        """Keys as every client finds them (llmos.security.client_keys): a stack the bench
        starts points its clients at its own keyring, or says it is --insecure.
        `stream=False`: requests ask for the final result only (no chunks); a request's
        first token time then comes from the result's usage (the broker's clock)."""
        assert num_connections >= 1
        self.context = zmq.Context()
        curve = client_curve()
        self.sockets = [connect_dealer(self.context, address, curve=curve) for _ in range(num_connections)]
        self.poller = zmq.Poller()
        for socket in self.sockets:
            self.poller.register(socket, zmq.POLLIN)
        self.track_chunks = track_chunks
        self.stream = stream
        # ids unique across drivers: the broker keys a live request by (tenant, id), and
        # every driver of a bench speaks as one tenant
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self._next_socket = itertools.cycle(self.sockets)
        self.live: dict[str, Outcome] = {}
        self.loop_of: dict[str, ClosedLoop] = {}
        self.outcomes: list[Outcome] = []
        self.chunks: list[tuple[float, str, int]] = []
        self.is_accepting = True

    def close(self) -> None:
        """Close the connections; the broker cancels whatever is still live on them."""
        for socket in self.sockets:
            socket.close(linger=0)
        self.context.term()

    def __enter__(self) -> LoadDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ sending

    def submit(self, job: Job, arrival_s: float, loop: ClosedLoop | None = None) -> None:
        request_id = f"{self._id_prefix}-{next(self._ids)}"
        request = pb.GenerateRequest(
            request_id=request_id,
            prompt=job.prompt,
            tier=job.tier,
            tenant=job.tenant,
            sampling=pb.SamplingParams(max_tokens=job.max_tokens),
            is_final_only=not self.stream,
        )
        outcome = Outcome(job.group, arrival_s, job.max_tokens, answer_tokens=job.answer_tokens)
        self.live[request_id] = outcome
        self.outcomes.append(outcome)
        if loop is not None:
            self.loop_of[request_id] = loop
        next(self._next_socket).send(pack(request))

    def top_up(self, loop: ClosedLoop, num_live: int) -> None:
        for _ in range(num_live):
            job = loop.next_job() if self.is_accepting else None
            if job is None:
                return
            self.submit(job, time.monotonic(), loop)

    # ------------------------------------------------------------ receiving

    def receive(self, socket: zmq.Socket) -> int:
        """Handle every frame waiting on `socket`; how many there were."""
        count = 0
        while True:
            try:
                frame = socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return count
            count += 1
            try:
                _, message = unpack(frame, ACCEPTS)
            except WireError:
                continue  # not ours to judge here; the request will show as unfinished
            outcome = self.live.get(message.request_id)
            if outcome is None or isinstance(message, pb.Accepted):
                continue
            now_s = time.monotonic()
            if isinstance(message, pb.TokenChunk):
                num_tokens = len(message.token_ids)
                if num_tokens and math.isnan(outcome.first_token_s):
                    outcome.first_token_s = now_s
                outcome.num_tokens += num_tokens
                if self.track_chunks:
                    self.chunks.append((now_s, outcome.group, num_tokens))
                continue
            if isinstance(message, pb.Error):
                outcome.error = ERROR_NAMES.get(message.code, str(message.code))
            elif isinstance(message, pb.GenerateResult) and not self.stream:
                usage = message.usage
                outcome.num_tokens = len(message.token_ids)
                outcome.first_token_s = now_s - (usage.total_time_s - usage.time_to_first_token_s)
            outcome.finished_s = now_s
            del self.live[message.request_id]
            loop = self.loop_of.pop(message.request_id, None)
            if loop is not None:
                self.top_up(loop, 1)

    # ------------------------------------------------------------ the loop

    def run(
        self,
        open_jobs: list[Job],
        loops: list[ClosedLoop] = (),
        window_s: float = math.inf,
        drain_timeout_s: float = 60.0,
    ) -> RunResult:
        """Send `open_jobs` at their offsets and run `loops` until `window_s`, then wait
        up to `drain_timeout_s` for every live request to end."""
        open_jobs = sorted(open_jobs, key=lambda job: job.offset_s)
        started_s = time.monotonic()
        window_end_s = started_s + window_s
        next_job = 0
        max_lag_s = 0.0
        last_message_s = started_s
        for loop in loops:
            self.top_up(loop, loop.num_live)
        while True:
            now_s = time.monotonic()
            while next_job < len(open_jobs) and started_s + open_jobs[next_job].offset_s <= now_s:
                arrival_s = started_s + open_jobs[next_job].offset_s
                self.submit(open_jobs[next_job], arrival_s)
                max_lag_s = max(max_lag_s, now_s - arrival_s)
                next_job += 1
            if now_s >= window_end_s:
                self.is_accepting = False
            is_feeding = self.is_accepting and any(not loop.is_exhausted for loop in loops)
            if next_job == len(open_jobs) and not self.live and not is_feeding:
                break
            if (not self.is_accepting and now_s > window_end_s + drain_timeout_s) or (
                self.live and now_s - last_message_s > STALL_TIMEOUT_S
            ):
                break  # starved or stuck: what is still live counts as unfinished
            wake_s = now_s + MAX_POLL_WAIT_S
            if next_job < len(open_jobs):
                wake_s = min(wake_s, started_s + open_jobs[next_job].offset_s)
            for socket, _ in self.poller.poll(max(0, int((wake_s - now_s) * 1000))):
                if self.receive(socket):
                    last_message_s = time.monotonic()
        effective_window_s = min(window_s, time.monotonic() - started_s)
        return RunResult(
            started_s=started_s,
            window_s=effective_window_s,
            ended_s=time.monotonic(),
            outcomes=self.outcomes,
            chunks=self.chunks,
            max_send_lag_s=max_lag_s,
            num_unfinished=len(self.live),
        )


# ---------------------------------------------------------------- scale: one process per client


def summarize_closed_loop(result: RunResult) -> dict:
    """A closed loop's counts, its first send and last answer, latencies (what a scale
    client reports back; the engine bench's stack side reads it too)."""
    done = [outcome for outcome in result.outcomes if outcome.is_done and not outcome.error]
    errors: dict[str, int] = {}
    for outcome in result.outcomes:
        if outcome.error:
            errors[outcome.error] = errors.get(outcome.error, 0) + 1
    return {
        "submitted": len(result.outcomes),
        "completed": len(done),
        "errors": errors,
        "unfinished": result.num_unfinished,
        "first_submit_s": min((o.arrival_s for o in result.outcomes), default=result.started_s),
        "last_finish_s": max((o.finished_s for o in done), default=result.ended_s),
        "tokens": sum(outcome.num_tokens for outcome in done),
        "ttft_p50_s": percentile((o.ttft_s for o in done), 50),
        "ttft_p99_s": percentile((o.ttft_s for o in done), 99),
        "jct_p50_s": percentile((o.jct_s for o in done), 50),
        "jct_p99_s": percentile((o.jct_s for o in done), 99),
    }


def run_scale_client(spec: dict) -> dict:
    """One scale client: `spec` = address, stream, requests, num_live, max_tokens, seed,
    connections, start_at_s (a time.monotonic instant shared by every client)."""
    jobs = scale_jobs(spec["requests"], spec["max_tokens"], spec["seed"])
    with LoadDriver(
        spec["address"], spec["connections"], track_chunks=False, stream=spec["stream"]
    ) as driver:
        time.sleep(max(0.0, spec["start_at_s"] - time.monotonic()))
        result = driver.run([], [ClosedLoop(jobs, spec["num_live"])], drain_timeout_s=spec["drain_timeout_s"])
    return {**summarize_closed_loop(result), "cpu_s": time.process_time()}


def main() -> None:
    print(json.dumps(run_scale_client(json.loads(sys.argv[1]))), flush=True)


if __name__ == "__main__":
    main()
