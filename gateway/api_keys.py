"""The gateway's API keys: `Authorization: Bearer KEY` -> the tenant it acts for.

The file is JSON, `{"<api key>": {"tenant": "alice", "tier_max": "standard"}}`.
Keys are held as SHA-256 digests, so a lookup compares digests, not the secrets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tenancy:
    tenant: str
    tier_max: str = ""


ANONYMOUS = Tenancy(tenant="")  # no --api-keys: the broker's default tenant


class ApiKeys:
    def __init__(self, tenancies: dict[str, Tenancy]) -> None:
        self._by_digest = {_digest(key): tenancy for key, tenancy in tenancies.items()}

    @classmethod
    def load(cls, path: str | Path) -> ApiKeys:
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected an object of API key -> {{tenant, tier_max}}")
        tenancies = {}
        for key, fields in raw.items():
            if not key or not isinstance(fields, dict) or not isinstance(fields.get("tenant"), str):
                raise ValueError(f"{path}: every API key needs an object with a 'tenant' string")
            tenancies[key] = Tenancy(tenant=fields["tenant"], tier_max=str(fields.get("tier_max") or ""))
        return cls(tenancies)

    def tenancy_of(self, authorization: str | None) -> Tenancy | None:
        """The tenancy of an `Authorization: Bearer KEY` header; None for a missing or unknown key."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        return self._by_digest.get(_digest(key.strip()))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
