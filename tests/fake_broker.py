"""A fake broker for client and CLI tests: a real ROUTER socket in a thread
that answers the client protocol from a script, so tests need no real services.

Prompts steer it:
    "full"           -> Error QUEUE_FULL with retry_after_ms=250
    "bad"            -> Error INVALID_ARGUMENT
    "silent"         -> nothing at all
    "accept-only"    -> Accepted, then nothing
    "fail-midway"    -> Accepted, one chunk, then Error WORKER_FAILED
    anything else    -> Accepted, one chunk per word, then a GenerateResult
"""

from __future__ import annotations

import threading
from collections import deque

import zmq
from google.protobuf.message import Message

from llmos.wire import error_frame, pack, pb, unpack
from llmos.wire.sockets import bind_router, router_frames

BROKER_ACCEPTS = frozenset({"generate", "cancel", "status_request"})
QUEUE_FULL_SENTENCE = "tier 'interactive' is full (4 requests waiting); retry later"
INVALID_SENTENCE = "max_tokens must not be negative (got -1)"


def answer_words(prompt: str) -> list[str]:
    """The fake's answer: the prompt's words, each with a trailing space but the last."""
    words = prompt.split()
    return [word + " " for word in words[:-1]] + words[-1:]


def token_id(index: int) -> int:
    return 100 + index


def script(request: pb.GenerateRequest) -> tuple[list[Message], list[Message]]:
    """(messages sent at once, messages sent once `hold_until` requests arrived)."""
    rid = request.request_id
    accepted = pb.Accepted(request_id=rid, tier=request.tier or "interactive")
    if request.prompt == "full":
        return [
            pb.Error(code=pb.QUEUE_FULL, message=QUEUE_FULL_SENTENCE, request_id=rid, retry_after_ms=250)
        ], []
    if request.prompt == "bad":
        return [pb.Error(code=pb.INVALID_ARGUMENT, message=INVALID_SENTENCE, request_id=rid)], []
    if request.prompt == "silent":
        return [], []
    if request.prompt == "accept-only":
        return [accepted], []
    if request.prompt == "fail-midway":
        return [accepted], [
            pb.TokenChunk(request_id=rid, token_ids=[1], text="x", index=0),
            pb.Error(code=pb.WORKER_FAILED, message="tokenizer exploded", request_id=rid),
        ]
    words = answer_words(request.prompt)
    chunks = [
        pb.TokenChunk(request_id=rid, token_ids=[token_id(i)], text=word, index=i)
        for i, word in enumerate(words)
    ]
    result = pb.GenerateResult(
        request_id=rid,
        text="".join(words),
        token_ids=[token_id(i) for i in range(len(words))],
        finish_reason=pb.FINISH_REASON_LENGTH,
        model="fake",
        worker_id="worker-0",
        usage=pb.Usage(prompt_tokens=len(words), generated_tokens=len(words)),
    )
    return [accepted], [*chunks, result]


def interleave(streams: list[list[tuple[bytes, Message]]]) -> list[tuple[bytes, Message]]:
    """Round-robin the held replies of several requests: a0 b0 a1 b1 ..."""
    queues = [deque(stream) for stream in streams]
    merged: list[tuple[bytes, Message]] = []
    while any(queues):
        for queue in queues:
            if queue:
                merged.append(queue.popleft())
    return merged


class FakeBroker:
    """Use as a context manager; `address` is where clients connect."""

    def __init__(self, hold_until: int = 1) -> None:
        self.hold_until = hold_until
        self.received: list[tuple[str, Message]] = []
        self.address = ""
        self._context = zmq.Context()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-broker", daemon=True)

    def __enter__(self) -> FakeBroker:
        self._thread.start()
        assert self._ready.wait(10), "fake broker did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._context.term()

    def _run(self) -> None:
        socket = bind_router(self._context, "tcp://127.0.0.1:0")
        self.address = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._ready.set()
        held: list[list[tuple[bytes, Message]]] = []  # per request: (client, reply)
        try:
            while not self._stop.is_set():
                if socket.poll(20, zmq.POLLIN):
                    self._answer(socket, socket.recv_multipart(), held)
        finally:
            socket.close(linger=0)

    def _answer(
        self, socket: zmq.Socket, frames: list[bytes], held: list[list[tuple[bytes, Message]]]
    ) -> None:
        identity, payload, _ = router_frames(frames)
        name, message = unpack(payload, BROKER_ACCEPTS)
        self.received.append((name, message))
        if name == "status_request":
            send(socket, identity, pack(status_reply()))
        elif name == "cancel":
            send(socket, identity, error_frame(pb.UNKNOWN_REQUEST, "no such request", message.request_id))
        else:
            now, later = script(message)
            for reply in now:
                send(socket, identity, pack(reply))
            held.append([(identity, reply) for reply in later])
            if len(held) >= self.hold_until:
                for peer, reply in interleave(held):
                    send(socket, peer, pack(reply))
                held.clear()


def send(socket: zmq.Socket, identity: bytes, payload: bytes) -> None:
    try:
        socket.send_multipart([identity, payload])
    except zmq.ZMQError as exc:  # ROUTER_MANDATORY: the client has gone, as real brokers allow
        if exc.errno != zmq.EHOSTUNREACH:
            raise


def status_reply() -> pb.StatusReply:
    return pb.StatusReply(
        tiers=[pb.TierStatus(tier="interactive", depth=2, max_depth=100, num_answers=40, answer_fill=0.5)],
        workers=[
            pb.WorkerStatus(
                worker_id="worker-0", models=["tiny"], num_running=1, max_num_seqs=4, device="cpu"
            )
        ],
        num_running=1,
        scheduler_online=True,
        scheduler_policy="priority",
        num_completed=7,
        num_rejected=1,
    )
