"""Per-tier admission limits and per-tenant quotas, parsed from the broker's config.

Every tier has a maximum queue depth, prompt size, max_tokens and a default
deadline. The global flags give the defaults; `--tier-limits` overrides them
per tier with JSON (inline or `@path`):

    {"interactive": {"max_queue_depth": 500, "max_tokens": 512, "deadline_ms": 30000},
     "batch": {"max_queue_depth": 100000}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from broker.config import BrokerConfig


@dataclass(frozen=True)
class TierLimits:
    max_queue_depth: int
    max_prompt_bytes: int
    max_tokens: int
    deadline_ms: int  # 0 = no deadline


def _load_json(text: str) -> dict:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("tier limits must be a JSON object of tier -> limits")
    return value


def parse_tier_limits(config: BrokerConfig) -> dict[str, TierLimits]:
    """Limits for every tier; ValueError with a clear sentence on a bad spec."""
    defaults = TierLimits(
        max_queue_depth=config.max_queue_depth,
        max_prompt_bytes=config.max_prompt_bytes,
        max_tokens=config.max_tokens_limit,
        deadline_ms=config.default_deadline_ms,
    )
    limits = {tier: defaults for tier in config.tier_names}
    if not config.tier_limits:
        return limits
    known = {field.name for field in fields(TierLimits)}
    for tier, overrides in _load_json(config.tier_limits).items():
        if tier not in limits:
            raise ValueError(f"tier limits name unknown tier '{tier}'; tiers are {config.tiers}")
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown tier limit(s) {sorted(unknown)} for '{tier}'; known: {sorted(known)}")
        if any(not isinstance(value, int) or value < 0 for value in overrides.values()):
            raise ValueError(f"tier limits for '{tier}' must be non-negative integers")
        limits[tier] = replace(defaults, **overrides)
    return limits


def parse_tenant_quotas(spec: str) -> dict[str, int]:
    """'alice=100,bob=20' -> {'alice': 100, 'bob': 20} (live requests per tenant)."""
    quotas: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        tenant, _, value = item.partition("=")
        if not tenant or not value.isdigit():
            raise ValueError(f"bad tenant quota '{item}'; write tenant=N, e.g. alice=100")
        quotas[tenant.strip()] = int(value)
    return quotas
