"""`llmos bench wire`: what the broker adds to one request on an idle stack, against raw ZeroMQ.

One stack (kernel, scheduler, broker with its journal and audit log, CURVE as
`llmos up` runs it) with one simulated worker whose steps take no time, and
beside it the raw peers of `llmos_bench.wire_peers`, each its own process:

  stack       `llmos.Client.generate(max_tokens=1)`, one request in flight;
  echo        a DEALER here, a ROUTER there that sends every message back, CURVE
              as the stack (the round trip the broker's target is set against);
  echo_plain  the same echo without CURVE;
  relay       DEALER -> relay (ROUTER/ROUTER) -> DEALER worker that echoes -> back:
              the stack's hops with none of the broker's work, CURVE as the stack.

The echo and relay messages are as large as the request's serialized envelope.
Every side sends `warmup` messages first, then `requests` one at a time, in
`rounds` rounds whose side order reverses every round, so a machine that slows
down for a while slows every side alike. CPU time per request comes from
/proc/<pid>/stat around each side's turns. It prints a table, then one JSON
line. Nothing here asserts a time.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import zmq

from llmos.client import Client, make_generate_request
from llmos.config import option, options_from
from llmos.errors import LlmosError
from llmos.processes import free_address
from llmos.wire import pack, pb
from llmos.wire.sockets import connect_dealer
from llmos_bench.machine import machine_facts
from llmos_bench.stack import SIM_MODEL, SimStack, StackError
from llmos_bench.wire_peers import WireKeys, write_keys
from llmos_bench.wire_report import format_report, summarize
from llmos_bench.workload import INTERACTIVE, make_prompt
from workers.sim import LatencyProfile

WIRE_KEYS_FILE = "wire-keys.json"
PEER_PROCESSES = {"echo": ("echo",), "echo_plain": ("echo-plain",), "relay": ("relay", "relay-worker")}
SIDES = ("stack", "echo", "echo_plain", "relay")
PEERS_READY_S = 30.0
PROBE_INTERVAL_S = 0.2
ANSWER_TIMEOUT_S = 10.0  # a raw peer that stays silent this long is broken, not slow
MAX_NUM_SEQS = 8  # the worker's slots; one request is in flight at a time anyway
ZERO_TIME = LatencyProfile(
    base_ms=0.0, per_seq_ms=0.0, per_prefill_token_ms=0.0, per_context_token_us=0.0, source="llmos bench wire"
)


@dataclass
class WireBenchConfig:
    requests: int = option(2000, "requests measured on each side, one at a time")
    warmup: int = option(200, "requests sent first on each side, not measured")
    rounds: int = option(
        5, "rounds; each side measures requests/rounds per round, the order reversing every round"
    )
    prompt_chars: int = option(40, "length of each request's prompt, characters")
    message_bytes: int = option(
        0, "echo and relay message size (0: the size of a request's serialized envelope)"
    )
    insecure: bool = option(False, "run the stack, echo and relay --insecure (default: CURVE, as llmos up)")
    seed: int = option(0, "seed of the prompts and of the echo and relay message bytes")
    log_dir: str = option("", "keep the stack's and the peers' logs here (default: a temporary folder)")
    json_only: bool = option(False, "print only the JSON line")

    def check(self) -> None:
        if self.requests < 1 or self.warmup < 0 or not 1 <= self.rounds <= self.requests:
            raise click.BadParameter("need --requests >= --rounds >= 1 and --warmup >= 0")
        if self.prompt_chars < 1 or self.message_bytes < 0:
            raise click.BadParameter("need --prompt-chars >= 1 and --message-bytes >= 0")


@dataclass
class SideRecord:
    """One side's latencies (seconds) and CPU seconds per process, over every round."""

    latencies_s: list[float] = field(default_factory=list)
    round_latencies_s: list[list[float]] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    num_finished: int = 0

    def forget_warm_up(self) -> None:
        self.num_finished = 0
        self.errors.clear()


@click.command("wire")
@options_from(WireBenchConfig)
def wire(**kwargs: Any) -> None:
    """Measure the broker's added latency for one request against a raw ZeroMQ echo and relay."""
    config = WireBenchConfig(**kwargs)
    config.check()
    echo = (lambda _: None) if config.json_only else click.echo
    summary = run_bench(config, echo)
    if not config.json_only:
        click.echo(format_report(summary))
    click.echo(json.dumps(summary))


def run_bench(config: WireBenchConfig, echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    log_dir = Path(config.log_dir) if config.log_dir else Path(tempfile.mkdtemp(prefix="llmos-wire-"))
    rng = random.Random(f"wire-{config.seed}")
    prompts = (make_prompt(rng, config.prompt_chars) for _ in itertools.count())
    envelope_bytes = len(pack(request_of(next(prompts))))
    payload = rng.randbytes(config.message_bytes or envelope_bytes)
    records = {side: SideRecord() for side in SIDES}
    is_secure = not config.insecure
    with SimStack(log_dir, 1, MAX_NUM_SEQS, ZERO_TIME, is_secure=is_secure) as stack:
        keys = write_keys(log_dir / WIRE_KEYS_FILE) if is_secure else None
        context = zmq.Context()
        try:
            with Client(stack.broker_address, **stack.client_keys()) as client:
                sides = {
                    "stack": StackSide(client, prompts, records["stack"]),
                    **start_peers(stack, context, keys, payload, records),
                }
                echo(f"warm-up: {config.warmup} requests per side ...")
                for side in sides.values():
                    side.run(config.warmup)
                for record in records.values():
                    record.forget_warm_up()
                measure(config, stack, sides, records, echo)
        finally:
            context.destroy(linger=0)
    return summarize(config, records, envelope_bytes, len(payload), machine_facts())


def request_of(prompt: str) -> pb.GenerateRequest:
    return make_generate_request(prompt, model=SIM_MODEL, max_tokens=1, tier=INTERACTIVE)


def measure(
    config: WireBenchConfig,
    stack: SimStack,
    sides: dict[str, Side],
    records: dict[str, SideRecord],
    echo: Callable[[str], None],
) -> None:
    """`config.requests` per side, in rounds; the side order reverses every round."""
    base, extra = divmod(config.requests, config.rounds)
    for index in range(config.rounds):
        count = base + (index < extra)
        order = SIDES if index % 2 == 0 else SIDES[::-1]
        echo(f"round {index + 1}/{config.rounds}: {count} requests per side, {', '.join(order)} ...")
        for name in order:
            stack.check_alive()
            cpu_before = stack.cpu_seconds()
            latencies_s = sides[name].run(count)
            cpu_after = stack.cpu_seconds()
            record = records[name]
            record.latencies_s += latencies_s
            record.round_latencies_s.append(latencies_s)
            for process in processes_of(name, cpu_after):
                seconds = cpu_after[process]
                record.cpu_s[process] = (
                    record.cpu_s.get(process, 0.0) + seconds - cpu_before.get(process, seconds)
                )


def processes_of(side: str, processes: dict[str, float]) -> list[str]:
    """The processes a side's requests go through: its peers, or the stack's own."""
    if side == "stack":
        return [name for name in processes if not any(name in peers for peers in PEER_PROCESSES.values())]
    return [name for name in processes if name in PEER_PROCESSES[side]]


class Side:
    """One way of making a round trip; `run(count)` makes `count`, one at a time, and
    returns the seconds of each that was answered."""

    def run(self, count: int) -> list[float]:
        raise NotImplementedError


class StackSide(Side):
    """`max_tokens=1` through the SDK: submit, Accepted, the token, GenerateResult."""

    def __init__(self, client: Client, prompts: Iterator[str], record: SideRecord) -> None:
        self.client = client
        self.prompts = prompts
        self.record = record

    def run(self, count: int) -> list[float]:
        latencies_s = []
        for prompt in itertools.islice(self.prompts, count):
            start_s = time.perf_counter()
            try:
                result = self.client.generate(prompt, model=SIM_MODEL, max_tokens=1, tier=INTERACTIVE)
            except LlmosError as exc:
                name = type(exc).__name__
                self.record.errors[name] = self.record.errors.get(name, 0) + 1
                continue
            latencies_s.append(time.perf_counter() - start_s)
            self.record.num_finished += result.finish_reason == pb.FINISH_REASON_LENGTH
        return latencies_s


class EchoSide(Side):
    """One DEALER to a peer that sends every message back."""

    def __init__(self, dealer: zmq.Socket, payload: bytes, record: SideRecord) -> None:
        self.dealer = dealer
        self.payload = payload
        self.record = record

    def run(self, count: int) -> list[float]:
        latencies_s = []
        timeout_ms = int(ANSWER_TIMEOUT_S * 1000)
        for _ in range(count):
            start_s = time.perf_counter()
            self.dealer.send(self.payload)
            if not self.dealer.poll(timeout_ms):
                raise StackError(f"a raw peer did not answer within {ANSWER_TIMEOUT_S:g} s")
            answer = self.dealer.recv()
            latencies_s.append(time.perf_counter() - start_s)
            self.record.num_finished += answer == self.payload
        return latencies_s

    def wait_answering(self) -> None:
        """Probe until the peer answers (the relay drops what comes before its worker),
        then throw away the answers to the probes still on their way."""
        deadline_s = time.monotonic() + PEERS_READY_S
        while not self.dealer.poll(int(PROBE_INTERVAL_S * 1000)):
            if time.monotonic() > deadline_s:
                raise StackError(f"a raw peer did not answer within {PEERS_READY_S:g} s")
            self.dealer.send(self.payload)
        while self.dealer.poll(int(PROBE_INTERVAL_S * 1000)):
            self.dealer.recv()


def start_peers(
    stack: SimStack,
    context: zmq.Context,
    keys: WireKeys | None,
    payload: bytes,
    records: dict[str, SideRecord],
) -> dict[str, Side]:
    """The echo and relay processes (stopped with the stack), each answering a DEALER here."""
    key_args = ["--keys", str(stack.log_dir / WIRE_KEYS_FILE)] if keys else []
    addresses = {name: free_address() for name in ("echo", "echo_plain", "relay", "relay_back")}
    start_peer(stack, "echo", "echo", addresses["echo"], *key_args)
    start_peer(stack, "echo-plain", "echo", addresses["echo_plain"])
    start_peer(stack, "relay", "relay", addresses["relay"], addresses["relay_back"], *key_args)
    start_peer(stack, "relay-worker", "relay-worker", addresses["relay_back"], *key_args)
    curve = keys.client() if keys else None
    sides = {
        name: EchoSide(connect_dealer(context, addresses[name], curve=side_curve), payload, records[name])
        for name, side_curve in (("echo", curve), ("echo_plain", None), ("relay", curve))
    }
    for side in sides.values():
        side.wait_answering()
    return dict(sides)


def start_peer(stack: SimStack, name: str, *args: str) -> None:
    stack.group.start_argv(name, [sys.executable, "-m", "llmos_bench.wire_peers", *args])
