"""The ZAP handler: at each CURVE handshake on a bound socket, admit the client's
key only if the allowlist holds it, unrevoked, with a role the socket's domain
lets in.

It is pyzmq's `ThreadAuthenticator` (a thread of the service's own context,
bound to libzmq's ZAP endpoint) with one callback per domain. It sets each
connection's User-Id to the client's Z85 public key, so a service can read
who sent any message (`llmos.security.curve.user_id_of`) and look the key up
again: a key revoked since its handshake is refused at its next message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from llmos.security.keyring import Allowlist, KeyEntry, KeyringError

log = logging.getLogger(__name__)

CLIENTS_DOMAIN = "llmos-clients"  # the broker's client port
WORKERS_DOMAIN = "llmos-workers"  # the broker's worker port
KERNEL_DOMAIN = "llmos-kernel"  # the kernel's ROUTER and its resource PUB
SCHEDULER_DOMAIN = "llmos-scheduler"  # the scheduler's ROUTER
ROLES_BY_DOMAIN: dict[str, frozenset[str]] = {
    CLIENTS_DOMAIN: frozenset({"client", "service", "admin"}),  # service: a gateway acting for tenants
    WORKERS_DOMAIN: frozenset({"worker"}),
    KERNEL_DOMAIN: frozenset({"worker", "service", "admin"}),
    SCHEDULER_DOMAIN: frozenset({"service", "admin"}),
}
DENIAL_LOG_INTERVAL_S = 1.0  # at most one log line per reason this often; the rest are counted


@dataclass
class KeyChanges:
    added: list[KeyEntry] = field(default_factory=list)
    revoked: list[KeyEntry] = field(default_factory=list)
    removed: list[KeyEntry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.revoked or self.removed)


def changes_between(old: Allowlist, new: Allowlist) -> KeyChanges:
    old_live = {entry.public_key: entry for entry in old.entries() if not entry.is_revoked}
    new_all = {entry.public_key: entry for entry in new.entries()}
    changes = KeyChanges()
    for key, entry in new_all.items():
        if not entry.is_revoked and key not in old_live:
            changes.added.append(entry)
    for key, entry in old_live.items():
        if key not in new_all:
            changes.removed.append(entry)
        elif new_all[key].is_revoked:
            changes.revoked.append(new_all[key])
    return changes


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


class AllowlistWatch:
    """The allowlist as last read from `path`. `current` is swapped whole on a reload,
    so the ZAP thread reads one list or the other, never half of one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = _file_stamp(path)
        self.current = Allowlist.load(path)  # a bad file at start stops the service, loudly
        self._bad_stamp: tuple[int, int] | None = None

    def reload(self) -> KeyChanges | None:
        """Read the file again; what changed, or None if it cannot be read (the old list stays)."""
        self._stamp = _file_stamp(self.path)
        try:
            new = Allowlist.load(self.path)
        except KeyringError as exc:
            if self._stamp != self._bad_stamp:  # once per bad version of the file
                log.error("keeping the previous allowlist: %s", exc)
                self._bad_stamp = self._stamp
            return None
        changes = changes_between(self.current, new)
        self.current = new
        if changes:
            log.info(
                "allowlist %s read again: %d added, %d revoked, %d removed",
                self.path,
                len(changes.added),
                len(changes.revoked),
                len(changes.removed),
            )
        return changes

    def reload_if_changed(self) -> KeyChanges | None:
        if _file_stamp(self.path) == self._stamp:
            return None
        return self.reload()


DeniedHook = Callable[[str, str, str], None]


class Authenticator:
    """`start` before binding the CURVE sockets it guards; `stop` before the context ends."""

    def __init__(
        self, context: zmq.Context, watch: AllowlistWatch, on_denied: DeniedHook | None = None
    ) -> None:
        self.context = context
        self.watch = watch
        self.on_denied = on_denied  # (domain, public key, reason), called from the ZAP thread
        self.num_denied = 0
        self._lock = threading.Lock()
        self._last_logged_s: dict[str, float] = {}
        self._num_unlogged: dict[str, int] = {}
        self._thread: ThreadAuthenticator | None = None

    def start(self) -> None:
        self._thread = ThreadAuthenticator(self.context, log=logging.getLogger("llmos.zap"))
        self._thread.start()
        for domain in ROLES_BY_DOMAIN:
            self._thread.configure_curve_callback(domain, credentials_provider=self)

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    def __enter__(self) -> Authenticator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: may this Z85 public key connect in `domain`?"""
        entry = self.watch.current.entry(key)
        if entry is not None and entry.role in ROLES_BY_DOMAIN.get(domain, frozenset()):
            return True
        reason = "unknown or revoked key" if entry is None else f"a {entry.role} key may not connect here"
        self.note_denied(domain, key.decode("ascii", "replace"), reason)
        return False

    def note_denied(self, domain: str, public_key: str, reason: str) -> None:
        with self._lock:
            self.num_denied += 1
            now_s = time.monotonic()
            if now_s - self._last_logged_s.get(reason, float("-inf")) >= DENIAL_LOG_INTERVAL_S:
                self._last_logged_s[reason] = now_s
                also = self._num_unlogged.pop(reason, 0)
                more = f" (and {also} more since the last line)" if also else ""
                log.warning(
                    "refused a CURVE handshake in %s: key %s…: %s%s", domain, public_key[:8], reason, more
                )
            else:
                self._num_unlogged[reason] = self._num_unlogged.get(reason, 0) + 1
        if self.on_denied is not None:
            try:
                self.on_denied(domain, public_key, reason)
            except Exception:  # a failing hook must not break the handshakes
                log.exception("the denial hook failed")
