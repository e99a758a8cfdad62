"""The engine's own thread. It owns the model and the engine's tokenizer;
the service thread owns every network socket (a zmq socket is not thread-safe,
so each belongs to one thread).

service -> engine: commands on a queue.Queue.
engine -> service: one `EngineOutput` per step on an inproc PAIR socket, which
also wakes the service's poll loop. It also carries the prefix cache's report
(character-block hashes of the cached prefixes) when that changed, at most every
PREFIX_REPORT_INTERVAL_S: a report costs the engine thread (the cache hashes a
prefix's text when first reported), the pipe and the kernel, and when requests
come and go the cache changes at every step.

Outputs carry the epoch of the engine when they were made. The service bumps
the epoch whenever it drops every request (the broker re-queued them), so an
output computed before the drop can never be mistaken for one of a request
that is dispatched again afterwards.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from llmos.wire import pb
from workers.engine_factory import GenerateEngine
from workers.pooling import PoolingEngine
from workers.requests import Delta, EngineRequest

log = logging.getLogger(__name__)

PREFIX_REPORT_INTERVAL_S = 0.1  # the kernel hears of cached prefixes this often at most


class Verb(enum.Enum):
    ADD = "add"
    CANCEL = "cancel"
    PREEMPT = "preempt"
    SET_KV_BUDGET = "set_kv_budget"
    DROP_ALL = "drop_all"
    STOP = "stop"


@dataclass
class EngineOutput:
    epoch: int
    deltas: list[Delta]
    prefix_hashes: list[int] | None = None  # None: the cached prefixes did not change


class EngineThread:
    def __init__(
        self,
        engine: GenerateEngine | PoolingEngine,
        context: zmq.Context,
        pipe_address: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.context = context
        self.pipe_address = pipe_address
        self.commands: queue.Queue[tuple[Verb, Any]] = queue.Queue()
        self.epoch = 0  # written by the engine thread only
        self.command_deltas: list[Delta] = []  # of commands (preempt): sent before the next step's
        self.prefix_report_version = 0  # of the last prefix report sent
        self.next_prefix_report_at_s = 0.0
        self.clock = clock
        self.thread = threading.Thread(target=self.run, name="engine", daemon=True)

    # ---------------------------------------------------------------- called by the service thread

    def start(self) -> None:
        self.thread.start()

    def submit(self, request: EngineRequest) -> None:
        self.commands.put((Verb.ADD, request))

    def cancel(self, request_id: str) -> None:
        self.commands.put((Verb.CANCEL, request_id))

    def preempt(self, request_id: str) -> None:
        self.commands.put((Verb.PREEMPT, request_id))

    def set_kv_budget(self, num_blocks: int, block_size: int) -> None:
        self.commands.put((Verb.SET_KV_BUDGET, (num_blocks, block_size)))

    def drop_all(self, epoch: int) -> None:
        self.commands.put((Verb.DROP_ALL, epoch))

    def stop(self, timeout_s: float) -> None:
        """Stop the thread after its step in flight; wait `timeout_s` at most."""
        if self.thread.ident is None:  # never started
            return
        self.commands.put((Verb.STOP, None))
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            log.warning("engine thread still in a step after %.1f s; leaving it", timeout_s)

    # ---------------------------------------------------------------- the engine thread

    def run(self) -> None:
        pipe = self.context.socket(zmq.PAIR)
        pipe.connect(self.pipe_address)
        try:
            while self.apply_commands():
                deltas, self.command_deltas = self.command_deltas, []
                if self.engine.has_work:
                    deltas += self.step()
                prefix_hashes = self.changed_prefix_hashes()
                if deltas or prefix_hashes is not None:
                    pipe.send_pyobj(EngineOutput(self.epoch, deltas, prefix_hashes))
        finally:
            pipe.close(linger=0)

    def apply_commands(self) -> bool:
        """Apply every queued command (waiting for one while idle); False on STOP."""
        block = not self.engine.has_work and not self.command_deltas
        while True:
            try:  # idle with a report held back: wake when it is due
                timeout_s = self.report_wait_s() if block else None
                verb, argument = self.commands.get(block=block, timeout=timeout_s)
            except queue.Empty:
                return True
            block = False
            if verb is Verb.STOP:
                return False
            if verb is Verb.ADD:
                self.engine.add_request(argument)
            elif verb is Verb.CANCEL:
                self.engine.cancel(argument)
            elif verb is Verb.PREEMPT:
                self.command_deltas += self.preempt_now(argument)
            elif verb is Verb.SET_KV_BUDGET:
                set_kv_budget = getattr(self.engine, "set_kv_budget", None)  # pooling engines count no blocks
                if set_kv_budget is not None:
                    set_kv_budget(*argument)
            elif verb is Verb.DROP_ALL:
                self.engine.drop_all()
                self.command_deltas.clear()  # about requests the broker re-queued
                self.epoch = argument

    def changed_prefix_hashes(self) -> list[int] | None:
        """The engine's prefix report if it changed since the last one sent and that one is
        PREFIX_REPORT_INTERVAL_S old (engines without a prefix cache have no
        `prefix_report_version`: never)."""
        version = getattr(self.engine, "prefix_report_version", 0)
        now_s = self.clock()
        if version == self.prefix_report_version or now_s < self.next_prefix_report_at_s:
            return None
        self.prefix_report_version = version
        self.next_prefix_report_at_s = now_s + PREFIX_REPORT_INTERVAL_S
        return self.engine.cached_prefix_hashes()

    def report_wait_s(self) -> float | None:
        """How long an idle engine thread may wait for a command: until its held-back
        prefix report is due, or for ever when none is."""
        if getattr(self.engine, "prefix_report_version", 0) == self.prefix_report_version:
            return None
        return max(self.next_prefix_report_at_s - self.clock(), 0.0)

    def preempt_now(self, request_id: str) -> list[Delta]:
        """The request's final PREEMPTED delta; none if it already finished (its final delta is out)."""
        preempt = getattr(self.engine, "preempt", None)
        if preempt is not None:
            delta = preempt(request_id)
            return [delta] if delta is not None else []
        # an engine that cannot preempt (pooling: nothing to keep) stops the request instead
        if self.engine.cancel(request_id):
            return [Delta(request_id, is_finished=True, finish_reason=pb.FINISH_REASON_PREEMPTED)]
        return []

    def step(self) -> list[Delta]:
        try:
            return self.engine.step()
        except Exception as exc:  # a bug outside any one request: fail them all, keep serving
            log.exception("worker %s engine step failed", self.engine.worker_id)
            return self.engine.fail_all(f"the worker's engine failed: {exc}")
