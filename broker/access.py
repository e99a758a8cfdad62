"""Who speaks at the broker's client port, and what their key lets them do.

The ZAP handler admitted the key at the handshake; each message carries it
(ZeroMQ's User-Id property), and `Access.caller` looks it up in the allowlist
again, so a key revoked since its handshake is refused at its next message.

- A `client` key acts for its own tenant only: a request naming another tenant
  is refused PERMISSION_DENIED, one naming none gets the key's tenant.
- A `service` key (a gateway) and an `admin` key may name any tenant.
- Only an `admin` key may drain a worker.
- A key's `tier_max` is the highest tier its requests may use.

With `--insecure` nobody has a key: every caller may do everything, and a
request's tenant is the field it sets, as before keys existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import zmq

from llmos.security.keyring import KeyEntry
from llmos.security.service_keys import ServiceKeys
from llmos.wire import WireError, pb
from llmos.wire.constants import DEFAULT_TENANT

ACTS_FOR_TENANTS = frozenset({"service", "admin"})


@dataclass(frozen=True)
class Caller:
    """The key behind one message; `entry` is None without keys (--insecure)."""

    entry: KeyEntry | None

    @property
    def name(self) -> str:
        return "" if self.entry is None else self.entry.name

    @property
    def public_key(self) -> str:
        return "" if self.entry is None else self.entry.public_key

    @property
    def is_admin(self) -> bool:
        return self.entry is None or self.entry.role == "admin"

    def tenant_for(self, asked: str, request_id: str) -> str:
        """The tenant a request runs as: the key's, never one a client key names."""
        if self.entry is None or self.entry.role in ACTS_FOR_TENANTS:
            return asked or (self.entry.tenant if self.entry is not None else DEFAULT_TENANT)
        if asked and asked != self.entry.tenant:
            raise WireError(
                pb.PERMISSION_DENIED,
                f"key '{self.entry.name}' acts for tenant '{self.entry.tenant}', not '{asked[:64]}'",
                request_id,
            )
        return self.entry.tenant

    def check_tier(self, tier: str, tiers: list[str], request_id: str) -> None:
        """Tiers run highest priority first; the key may use its tier_max and those below."""
        if self.entry is None or not self.entry.tier_max or self.entry.tier_max not in tiers:
            return
        if tier in tiers and tiers.index(tier) < tiers.index(self.entry.tier_max):
            raise WireError(
                pb.PERMISSION_DENIED,
                f"key '{self.entry.name}' may use tier '{self.entry.tier_max}' and below, not '{tier}'",
                request_id,
            )

    def require_admin(self, what: str) -> None:
        if not self.is_admin:
            role = "" if self.entry is None else self.entry.role
            raise WireError(pb.PERMISSION_DENIED, f"{what} needs an admin key, not a {role} key")


INSECURE_CALLER = Caller(None)


class Access:
    def __init__(self, keys: ServiceKeys) -> None:
        self.keys = keys

    def caller(self, frame: zmq.Frame) -> Caller | None:
        """The caller behind a message; None if its key is no longer allowed (revoked)."""
        if not self.keys.is_secure:
            return INSECURE_CALLER
        entry = self.keys.entry_of(frame)
        return None if entry is None else Caller(entry)
