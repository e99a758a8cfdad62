"""Kernel configuration: one field per `llmos kernel` flag and LLMOS_* variable."""

from __future__ import annotations

from dataclasses import dataclass

from llmos.config import INSECURE_HELP, KEYS_DIR_HELP, option
from llmos.logs import LOG_FORMAT_HELP
from llmos.observability import METRICS_HOST_HELP, METRICS_PORT_HELP
from llmos.wire.constants import (
    DEFAULT_BLOCK_SIZE,
    HEARTBEAT_INTERVAL_MS,
    KERNEL_PORT,
    KERNEL_PUB_PORT,
    bind_all,
)

# Each worker costs the kernel a record and its share of every view: a bound far
# above any real fleet, so a peer inventing worker ids cannot grow it without end.
DEFAULT_MAX_WORKERS = 1024


@dataclass
class KernelConfig:
    kernel_bind: str = option(bind_all(KERNEL_PORT), "ROUTER address workers and clients query")
    kernel_pub_bind: str = option(bind_all(KERNEL_PUB_PORT), "PUB address resource views go out on")
    block_size: int = option(DEFAULT_BLOCK_SIZE, "tokens per KV block")
    heartbeat_interval_ms: int = option(
        HEARTBEAT_INTERVAL_MS, "heartbeat period; a worker is dead after 3 silent periods"
    )
    max_workers: int = option(
        DEFAULT_MAX_WORKERS, "workers registered at once; one more is refused UNAVAILABLE"
    )
    insecure: bool = option(False, INSECURE_HELP)
    keys_dir: str = option("", KEYS_DIR_HELP)
    log_format: str = option("text", LOG_FORMAT_HELP)
    metrics_port: int = option(0, METRICS_PORT_HELP)
    metrics_host: str = option("127.0.0.1", METRICS_HOST_HELP)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be at least 1, not {self.block_size}")
        if self.heartbeat_interval_ms < 1:
            raise ValueError(f"heartbeat_interval_ms must be at least 1, not {self.heartbeat_interval_ms}")
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {self.max_workers}")
