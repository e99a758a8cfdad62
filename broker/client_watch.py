"""Notice clients that disconnect, so their requests stop wherever they are.

A ROUTER does not tell its owner when a peer leaves. The socket monitor does
(EVENT_DISCONNECTED, with the connection's file descriptor), and each received
message tells which descriptor it came on (SRCFD), so the broker keeps
descriptor -> identity and turns disconnect events into identities.

It also knows the key each identity spoke with, so a revoked key's connections
can be found and closed: `hang_up` shuts the TCP connection down under libzmq,
which then ends it as it ends any connection whose peer went away.
"""

from __future__ import annotations

import os
import socket

import zmq
from zmq.utils.monitor import recv_monitor_message


class ClientWatch:
    def __init__(self, router: zmq.Socket) -> None:
        self.monitor = router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._identity_by_fd: dict[int, bytes] = {}
        # a descriptor whose old peer we already buried (its fd was reused before
        # the old peer's disconnect event reached us): ignore that stale event
        self._stale_events_by_fd: dict[int, int] = {}
        self._key_by_identity: dict[bytes, str] = {}  # only identities with a live descriptor

    def note(self, frame: zmq.Frame, identity: bytes) -> bytes | None:
        """Record the descriptor a message came on; the identity it replaced, if any.
        zmq.ZMQError if the frame tells no descriptor (a peer speaking ZMTP 1.0 or 2.0
        framing): such a connection cannot be watched."""
        fd = frame.get(zmq.SRCFD)
        previous = self._identity_by_fd.get(fd)
        self._identity_by_fd[fd] = identity
        if previous is None or previous == identity:
            return None
        self._stale_events_by_fd[fd] = self._stale_events_by_fd.get(fd, 0) + 1
        return previous

    def note_key(self, identity: bytes, public_key: str) -> None:
        """After `note`: the key the identity's message came with ("" without keys)."""
        if public_key:
            self._key_by_identity[identity] = public_key

    def identities_of_keys(self, public_keys: set[str]) -> list[bytes]:
        return [identity for identity, key in self._key_by_identity.items() if key in public_keys]

    def hang_up(self, identity: bytes) -> None:
        """Close the connections `identity` spoke on (the monitor then reports them gone)."""
        for fd, holder in list(self._identity_by_fd.items()):
            if holder != identity:
                continue
            try:
                with socket.socket(fileno=os.dup(fd)) as conn:
                    conn.shutdown(socket.SHUT_RDWR)  # of the connection, so libzmq's copy sees it too
            except OSError:
                pass  # closed already
        self._key_by_identity.pop(identity, None)

    def disconnected(self) -> list[bytes]:
        """Identities whose connection closed since the last call."""
        gone: list[bytes] = []
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            fd = event["value"]
            if event["event"] != zmq.EVENT_DISCONNECTED:
                continue
            if self._stale_events_by_fd.get(fd):
                self._stale_events_by_fd[fd] -= 1
                continue
            identity = self._identity_by_fd.pop(fd, None)
            if identity is not None:
                gone.append(identity)
                self._key_by_identity.pop(identity, None)
        return gone

    def close(self) -> None:
        self.monitor.close()
