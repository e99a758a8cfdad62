"""The engine's own thread. It owns the model and the engine's tokenizer;
the service thread owns every network socket (STYLE.md 9).

service -> engine: commands on a queue.Queue.
engine -> service: one `EngineOutput` per step on an inproc PAIR socket, which
also wakes the service's poll loop.

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
from dataclasses import dataclass
from typing import Any

import zmq

from workers.engine import Engine
from workers.requests import Delta, EngineRequest

logger = logging.getLogger("workers.engine_thread")


class Verb(enum.Enum):
    ADD = "add"
    CANCEL = "cancel"
    DROP_ALL = "drop_all"
    STOP = "stop"


@dataclass
class EngineOutput:
    epoch: int
    deltas: list[Delta]


class EngineThread:
    def __init__(self, engine: Engine, context: zmq.Context, pipe_address: str) -> None:
        self.engine = engine
        self.context = context
        self.pipe_address = pipe_address
        self.commands: queue.Queue[tuple[Verb, Any]] = queue.Queue()
        self.epoch = 0  # written by the engine thread only
        self.thread = threading.Thread(target=self.run, name="engine", daemon=True)

    # ---------------------------------------------------------------- called by the service thread

    def start(self) -> None:
        self.thread.start()

    def submit(self, request: EngineRequest) -> None:
        self.commands.put((Verb.ADD, request))

    def cancel(self, request_id: str) -> None:
        self.commands.put((Verb.CANCEL, request_id))

    def drop_all(self, epoch: int) -> None:
        self.commands.put((Verb.DROP_ALL, epoch))

    def stop(self, timeout_s: float) -> None:
        self.commands.put((Verb.STOP, None))
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            logger.warning("engine thread still in a step after %.1f s; leaving it", timeout_s)

    # ---------------------------------------------------------------- the engine thread

    def run(self) -> None:
        pipe = self.context.socket(zmq.PAIR)
        pipe.connect(self.pipe_address)
        try:
            while self.apply_commands():
                if self.engine.has_work:
                    deltas = self.step()
                    if deltas:
                        pipe.send_pyobj(EngineOutput(self.epoch, deltas))
        finally:
            pipe.close(linger=0)

    def apply_commands(self) -> bool:
        """Apply every queued command (waiting for one while idle); False on STOP."""
        block = not self.engine.has_work
        while True:
            try:
                verb, argument = self.commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            if verb is Verb.STOP:
                return False
            if verb is Verb.ADD:
                self.engine.add_request(argument)
            elif verb is Verb.CANCEL:
                self.engine.cancel(argument)
            elif verb is Verb.DROP_ALL:
                self.engine.drop_all()
                self.epoch = argument

    def step(self) -> list[Delta]:
        try:
            return self.engine.step()
        except Exception as exc:  # a bug outside any one request: fail them all, keep serving
            logger.exception("worker %s engine step failed", self.engine.worker_id)
            return self.engine.fail_all(f"the worker's engine failed: {exc}")
