"""Scheduler configuration: one field per `llmos scheduler` flag and LLMOS_* variable."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from llmos.config import INSECURE_HELP, KEYS_DIR_HELP, option
from llmos.logs import LOG_FORMAT_HELP
from llmos.observability import METRICS_HOST_HELP, METRICS_PORT_HELP
from llmos.wire.constants import HEARTBEAT_INTERVAL_MS, KERNEL_PUB_PORT, SCHEDULER_PORT, bind_all, tcp
from scheduler_svc.policy_base import PolicyName, PolicyOptions
from scheduler_svc.policy_fair import parse_tenant_weights

_DEFAULTS = PolicyOptions()


@dataclass
class SchedulerConfig:
    scheduler_bind: str = option(bind_all(SCHEDULER_PORT), "ROUTER address the broker asks")
    kernel_pub_address: str = option(tcp(KERNEL_PUB_PORT), "kernel PUB to take resource views from")
    policy: str = option(
        PolicyName.PRIORITY.value,
        f"scheduling policy: {', '.join(PolicyName.choices())} (`llmos policy NAME` switches it at runtime)",
    )
    heartbeat_interval_ms: int = option(
        HEARTBEAT_INTERVAL_MS, "kernel view period; a view is stale after 3 silent periods"
    )
    # PolicyOptions, field for field
    tenant_weights: str = option(
        _DEFAULTS.tenant_weights, "fair: tenant weights, e.g. 'tenant-a=1,tenant-b=3' (others weigh 1)"
    )
    mlfq_base_quantum: int = option(
        _DEFAULTS.mlfq_base_quantum, "mlfq: generated tokens at level 0; each level doubles it"
    )
    mlfq_num_levels: int = option(_DEFAULTS.mlfq_num_levels, "mlfq: number of levels")
    mlfq_aging_s: float = option(
        _DEFAULTS.mlfq_aging_s, "mlfq: a waiting request climbs one level per this many seconds"
    )
    insecure: bool = option(False, INSECURE_HELP)
    keys_dir: str = option("", KEYS_DIR_HELP)
    log_format: str = option("text", LOG_FORMAT_HELP)
    metrics_port: int = option(0, METRICS_PORT_HELP)
    metrics_host: str = option("127.0.0.1", METRICS_HOST_HELP)

    def __post_init__(self) -> None:
        PolicyName.parse(self.policy)
        if self.heartbeat_interval_ms < 1:
            raise ValueError(f"heartbeat_interval_ms must be at least 1, not {self.heartbeat_interval_ms}")
        PolicyOptions(**self.policy_options())
        parse_tenant_weights(self.tenant_weights)

    def policy_options(self) -> dict[str, Any]:
        """The PolicyOptions fields, for `make_policy(name, **options)`."""
        return {field.name: getattr(self, field.name) for field in fields(PolicyOptions)}
