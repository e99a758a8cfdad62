"""Broker configuration: one field per `llmos broker` flag and LLMOS_* variable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmos.config import INSECURE_HELP, KEYS_DIR_HELP, llmos_home, option
from llmos.logs import LOG_FORMAT_HELP
from llmos.observability import METRICS_HOST_HELP, METRICS_PORT_HELP
from llmos.wire.constants import (
    CLIENT_PORT,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIERS,
    HEARTBEAT_INTERVAL_MS,
    SCHEDULER_PORT,
    SCHEDULER_RETRY_MS,
    SCHEDULER_TIMEOUT_MS,
    WORKER_PORT,
    bind_all,
    tcp,
)


@dataclass
class BrokerConfig:
    client_bind: str = option(bind_all(CLIENT_PORT), "ROUTER address clients connect to")
    worker_bind: str = option(bind_all(WORKER_PORT), "ROUTER address workers connect to")
    scheduler_address: str = option(tcp(SCHEDULER_PORT), "scheduler ROUTER to ask for placements")
    tiers: str = option(",".join(DEFAULT_TIERS), "queue tiers, highest priority first")
    default_tier: str = option("standard", "tier of requests that name none")
    max_queue_depth: int = option(10_000, "requests each tier may hold before QUEUE_FULL")
    max_prompt_bytes: int = option(1024 * 1024, "largest prompt accepted (UTF-8 bytes)")
    default_max_tokens: int = option(DEFAULT_MAX_TOKENS, "max_tokens of requests that send 0")
    max_tokens_limit: int = option(4096, "largest max_tokens accepted")
    default_deadline_ms: int = option(0, "deadline of requests that name none (0 = none)")
    tier_limits: str = option(
        "",
        "per-tier overrides as JSON or @file: {tier: {max_queue_depth, "
        "max_prompt_bytes, max_tokens, deadline_ms}}",
    )
    tenant_max_requests: int = option(
        0, "live (queued + running) requests per tenant before QUOTA_EXCEEDED (0 = unlimited)"
    )
    tenant_quotas: str = option("", "per-tenant live-request quotas, e.g. alice=100,bob=20")
    max_inputs: int = option(256, "largest number of inputs in one embed/classify request")
    # a byte-level BPE token is rarely longer than 8 bytes of UTF-8, so a prompt longer
    # than this many bytes a token of context cannot fit, and is refused without tokenizing
    max_prompt_bytes_per_token: int = option(
        8, "refuse prompts over this many UTF-8 bytes per token of the model's max_model_len"
    )
    model_grace_s: float = option(
        30.0, "a model is forgotten this long after its last worker left (its queued requests refused)"
    )
    client_grace_ms: int = option(
        5000,
        "a client whose connection closed has this long to reconnect and resend its "
        "requests; then they are cancelled (0 = at once)",
    )
    max_restarts: int = option(3, "times a request moves to another worker before WORKER_FAILED")
    heartbeat_interval_ms: int = option(
        HEARTBEAT_INTERVAL_MS, "heartbeat period; dead after 3 silent periods"
    )
    preemption_check_ms: int = option(
        50,
        "while every slot is busy, ask about preemptions "
        "this often; a top-tier arrival asks sooner while "
        "lower tiers hold slots",
    )
    scheduler_timeout_ms: int = option(
        SCHEDULER_TIMEOUT_MS, "wait this long for a decision, then decide locally"
    )
    scheduler_retry_ms: int = option(
        SCHEDULER_RETRY_MS, "after a scheduler timeout, ask again after this long"
    )
    direct_placement: bool = option(
        True,
        "place a request alone in the queue on the one idle worker for its model without "
        "asking the scheduler (stateless policies only: not fair)",
    )
    fallback_policy: str = option("priority", "policy the broker runs itself when the scheduler is down")
    tenant_weights: str = option(
        "",
        "fair share weights for the fallback policy, e.g. a=1,b=3 "
        "(the same LLMOS_TENANT_WEIGHTS the scheduler reads)",
    )

    journal: str = option(
        "",
        "SQLite journal of accepted requests, resumed after a restart "
        "(empty: $LLMOS_HOME/broker-journal.sqlite3; none: in memory only, nothing survives a restart)",
    )
    journal_sync: str = option(
        "normal", "normal survives a broker kill; full also a power loss (an fsync per commit)"
    )
    result_ttl_s: float = option(600.0, "keep finished answers this long for clients that resend")
    insecure: bool = option(False, INSECURE_HELP)
    keys_dir: str = option("", KEYS_DIR_HELP)
    log_format: str = option("text", LOG_FORMAT_HELP)
    metrics_port: int = option(0, METRICS_PORT_HELP)
    metrics_host: str = option("127.0.0.1", METRICS_HOST_HELP)
    metrics_max_tenants: int = option(
        32, 'tenants labelled by name in /metrics; later ones count as tenant="other"'
    )
    audit_log: str = option(
        "",
        "tamper-evident audit log, one JSON line per admission, refusal, cancel, completion, "
        "authentication failure, key change and admin action (empty: $LLMOS_HOME/audit.jsonl; none: off)",
    )
    audit_fsync: str = option("interval", "every: fsync each audit line; interval: at most once a second")
    log_prompts: bool = option(
        False, "log each admitted prompt's text (off: logs carry lengths and a keyed hash, never text)"
    )

    @property
    def journal_path(self) -> str:
        """The journal's file, or ":memory:" (SQLite's in-memory database) for none."""
        if self.journal == "none":
            return ":memory:"
        return self.journal or str(llmos_home() / "broker-journal.sqlite3")

    @property
    def audit_log_path(self) -> Path | None:
        if self.audit_log == "none":
            return None
        return Path(self.audit_log) if self.audit_log else llmos_home() / "audit.jsonl"

    @property
    def tier_names(self) -> list[str]:
        return [tier.strip() for tier in self.tiers.split(",") if tier.strip()]
