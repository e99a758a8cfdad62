"""What one service needs to speak CURVE: its own key pair, its peers' public keys,
the allowlist, and (for a service that binds) a ZAP handler that admits only
allowlisted keys of the roles each socket's domain lets in.

Every service opens its keys with `open_service_keys` before it makes a socket.
With `--insecure` there are none: every socket is plain TCP, and the service says
so in a warning at start, since then any process that reaches a port may speak
on it.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from llmos.security.authenticator import AllowlistWatch, Authenticator, KeyChanges
from llmos.security.curve import CurveClient, CurveServer, user_id_of
from llmos.security.keyring import KeyEntry, Keyring, default_keys_dir, ensure_keyring
from llmos.signals import event_on_sighup

log = logging.getLogger(__name__)

DeniedHook = Callable[[str, str, str], None]  # (domain, public key, reason), from the ZAP thread
ADMIN_ROLE = "admin"
# How often a service looks whether the allowlist file changed: `llmos keys revoke`
# takes effect within this long (SIGHUP at once).
ALLOWLIST_CHECK_INTERVAL_S = 1.0


@dataclass
class ServiceKeys:
    """`name` is the key pair this process speaks with: broker, kernel, scheduler or worker."""

    name: str
    keyring: Keyring | None = None  # None: --insecure
    watch: AllowlistWatch | None = None  # services that bind: who may connect
    authenticator: Authenticator | None = None
    reload_requested: threading.Event = field(default_factory=threading.Event)  # SIGHUP sets it
    next_check_s: float = 0.0

    @property
    def is_secure(self) -> bool:
        return self.keyring is not None

    def server(self, domain: str) -> CurveServer | None:
        """Options for a socket this service binds, in ZAP `domain`."""
        if self.keyring is None:
            return None
        public_key, secret_key = self.keyring.key_pair(self.name)
        return CurveServer(public_key=public_key, secret_key=secret_key, domain=domain)

    def client_of(self, server_name: str) -> CurveClient | None:
        """Options for a socket this service connects to `server_name` (broker, kernel, scheduler)."""
        if self.keyring is None:
            return None
        public_key, secret_key = self.keyring.key_pair(self.name)
        return CurveClient(
            public_key=public_key,
            secret_key=secret_key,
            server_key=self.keyring.server_public_key(server_name),
        )

    def entry_of(self, frame: zmq.Frame) -> KeyEntry | None:
        """The allowlist entry of the key a message came with; None if the key is
        unknown or revoked since its handshake (a stranger, then)."""
        if self.watch is None:
            return None
        return self.watch.current.entry(user_id_of(frame))

    def role_of(self, frame: zmq.Frame) -> str:
        """The role of the key a message came with ("" for none); with --insecure
        every peer may do everything, as before keys existed."""
        if not self.is_secure:
            return ADMIN_ROLE
        entry = self.entry_of(frame)
        return "" if entry is None else entry.role

    def poll_changes(self, now_s: float) -> KeyChanges | None:
        """Read the allowlist again after a SIGHUP, or if its file changed since the
        last look (`llmos keys add/revoke` write it); what changed, or None."""
        if self.watch is None:
            return None
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            log.info("SIGHUP: reading the allowlist %s again", self.watch.path)
            return self.watch.reload()
        if now_s < self.next_check_s:
            return None
        self.next_check_s = now_s + ALLOWLIST_CHECK_INTERVAL_S
        return self.watch.reload_if_changed()

    def close(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


def open_service_keys(
    name: str,
    is_insecure: bool,
    keys_dir: str,
    context: zmq.Context | None = None,
    on_denied: DeniedHook | None = None,
) -> ServiceKeys:
    """The keys of service `name`; with a `context`, also the allowlist and the ZAP
    handler its bound sockets need (start it before binding: libzmq asks it at each handshake)."""
    if is_insecure:
        log.warning(
            "%s runs with --insecure: plain TCP, no authentication; any process that reaches "
            "its ports may speak on them (use only on a trusted machine or network)",
            name,
        )
        return ServiceKeys(name)
    keys_path = Path(keys_dir) if keys_dir else default_keys_dir()
    found = Keyring(keys_path)
    if context is None and found.secret_key_file(name).exists():
        # Binds nothing (a worker): takes the keys it was given as they are. On another
        # host that is its own secret key and the servers' public keys only, which
        # making the keyring would take for half pairs and replace.
        keyring = found
    else:
        keyring = open_keyring(keys_path)
    keys = ServiceKeys(name, keyring)
    if context is not None:
        keys.watch = AllowlistWatch(keyring.allowlist_path)
        keys.reload_requested = event_on_sighup()
        keys.authenticator = Authenticator(context, keys.watch, on_denied)
        keys.authenticator.start()
    log.info("%s speaks CURVE with the keys in %s", name, keyring.keys_dir)
    return keys


def open_keyring(keys_dir: Path) -> Keyring:
    """The keyring in `keys_dir`, made on first use. Services started together
    (`llmos up`, compose) would race to make it, so one makes it under a lock."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # inside the keyring, so containers sharing it as a volume share the lock too
    with open(keys_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return ensure_keyring(keys_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
