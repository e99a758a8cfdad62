"""CURVE options for one socket, set before it binds or connects (libzmq reads them then)."""

from __future__ import annotations

from dataclasses import dataclass

import zmq


@dataclass(frozen=True)
class CurveServer:
    """A bound socket: its key pair, and the ZAP domain its handshakes are checked in."""

    public_key: bytes
    secret_key: bytes
    domain: str

    def apply(self, socket: zmq.Socket) -> None:
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        socket.setsockopt_string(zmq.ZAP_DOMAIN, self.domain)


@dataclass(frozen=True)
class CurveClient:
    """A connecting socket: its own key pair and the server's public key."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes

    def apply(self, socket: zmq.Socket) -> None:
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)


def user_id_of(frame: zmq.Frame) -> str:
    """The User-Id the ZAP handler gave the connection a message came on (the client's
    Z85 public key), or "" without one (a plain connection)."""
    try:
        return str(frame.get("User-Id") or "")
    except zmq.ZMQError:
        return ""
