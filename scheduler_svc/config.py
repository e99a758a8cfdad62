"""Scheduler configuration: one field per `llmos scheduler` flag and LLMOS_* variable."""

from __future__ import annotations

from dataclasses import dataclass

from llmos.config import option
from llmos.wire.constants import HEARTBEAT_INTERVAL_MS, KERNEL_PUB_PORT, SCHEDULER_PORT, bind_all, tcp
from scheduler_svc.policies import PolicyName


@dataclass
class SchedulerConfig:
    scheduler_bind: str = option(bind_all(SCHEDULER_PORT), "ROUTER address the broker asks")
    kernel_pub_address: str = option(tcp(KERNEL_PUB_PORT), "kernel PUB to take resource views from")
    policy: str = option(PolicyName.PRIORITY.value,
                         f"placement policy: {', '.join(name.value for name in PolicyName)}")
    heartbeat_interval_ms: int = option(HEARTBEAT_INTERVAL_MS,
                                        "kernel view period; a view is stale after 3 silent periods")

    def __post_init__(self) -> None:
        PolicyName.parse(self.policy)
        if self.heartbeat_interval_ms < 1:
            raise ValueError(f"heartbeat_interval_ms must be at least 1, not {self.heartbeat_interval_ms}")
