"""The raw ZeroMQ peers `llmos bench wire` measures the broker against, each its own process.

    python -m llmos_bench.wire_peers echo ADDRESS [--keys FILE]
        a ROUTER that sends every message back to whoever sent it;
    python -m llmos_bench.wire_peers relay FRONT BACK --keys FILE
        a ROUTER facing clients and a ROUTER facing one worker, passing a client's
        message to the worker and the worker's answer back: the broker's hops with
        none of its work;
    python -m llmos_bench.wire_peers relay-worker BACK --keys FILE
        the worker behind the relay: a DEALER that sends every message back.

Sockets come from llmos.wire.sockets, with the stack's LINGER, high-water marks and
frame limit; `--keys` (a JSON file `write_keys` made) turns CURVE on, as in the stack.
No ZAP handler checks the client key: a handshake costs once per connection, and
what is measured here is the cost per message. Each runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import zmq

from llmos.security.curve import CurveClient, CurveServer
from llmos.wire.sockets import bind_router, connect_dealer

CURVE_DOMAIN = "llmos-bench-wire"
POLL_MS = 1000  # how often a peer looks up from its sockets; SIGTERM ends it at once anyway
READY = b"ready"  # the relay worker's first message: the relay learns its identity from it


@dataclass(frozen=True)
class WireKeys:
    """One CURVE key pair for every bound socket, one for every connecting socket (Z85)."""

    server_public: str
    server_secret: str
    client_public: str
    client_secret: str

    def server(self) -> CurveServer:
        return CurveServer(self.server_public.encode(), self.server_secret.encode(), CURVE_DOMAIN)

    def client(self) -> CurveClient:
        return CurveClient(
            self.client_public.encode(), self.client_secret.encode(), self.server_public.encode()
        )


def write_keys(path: Path) -> WireKeys:
    """Fresh key pairs, saved (owner-only) where the peer processes read them."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    keys = WireKeys(
        server_public.decode(), server_secret.decode(), client_public.decode(), client_secret.decode()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as keys_file:
        json.dump(asdict(keys), keys_file)
    return keys


def read_keys(path: str) -> WireKeys | None:
    return WireKeys(**json.loads(Path(path).read_text())) if path else None


def run_echo(context: zmq.Context, address: str, keys: WireKeys | None) -> None:
    router = bind_router(context, address, keys.server() if keys else None)
    while True:
        if router.poll(POLL_MS):
            router.send_multipart(router.recv_multipart())


def run_relay(context: zmq.Context, front_address: str, back_address: str, keys: WireKeys | None) -> None:
    """Clients' [identity, payload] go to the worker as [identity, payload]; its answers
    come back the same way. What arrives before the worker said READY is dropped."""
    front = bind_router(context, front_address, keys.server() if keys else None)
    back = bind_router(context, back_address, keys.server() if keys else None)
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    worker: bytes | None = None
    while True:
        ready = dict(poller.poll(POLL_MS))
        if back in ready:
            frames = back.recv_multipart()
            if frames[1:] == [READY]:
                worker = frames[0]
            else:
                front.send_multipart(frames[1:])
        if front in ready:
            frames = front.recv_multipart()
            if worker is not None:
                back.send_multipart([worker, *frames])


def run_relay_worker(context: zmq.Context, back_address: str, keys: WireKeys | None) -> None:
    dealer = connect_dealer(context, back_address, curve=keys.client() if keys else None)
    dealer.send(READY)
    while True:
        if dealer.poll(POLL_MS):
            dealer.send_multipart(dealer.recv_multipart())


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmos_bench.wire_peers")
    parser.add_argument("role", choices=["echo", "relay", "relay-worker"])
    parser.add_argument("addresses", nargs="+")
    parser.add_argument("--keys", default="", help="the JSON file of write_keys: CURVE on")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    keys = read_keys(args.keys)
    context = zmq.Context()
    if args.role == "echo":
        run_echo(context, args.addresses[0], keys)
    elif args.role == "relay":
        run_relay(context, args.addresses[0], args.addresses[1], keys)
    else:
        run_relay_worker(context, args.addresses[0], keys)


if __name__ == "__main__":
    main(sys.argv[1:])
