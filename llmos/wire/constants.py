"""Wire constants: protocol version, default addresses, timers, socket limits.

No other module spells an address default, a heartbeat timer or an HWM.
"""

from llmos.wire import llmos_pb2 as pb

PROTOCOL_VERSION: int = pb.PROTOCOL_VERSION_CURRENT

# Default endpoints. Services bind `*`; clients connect to loopback.
DEFAULT_HOST = "127.0.0.1"
CLIENT_PORT = 5555  # broker ROUTER for clients
WORKER_PORT = 5556  # broker ROUTER for workers
KERNEL_PORT = 5557  # kernel ROUTER for commands and queries
KERNEL_PUB_PORT = 5558  # kernel PUB for resource events
SCHEDULER_PORT = 5559  # scheduler ROUTER for placement queries

# Paranoid Pirate heartbeating: a peer is dead after LIVENESS silent intervals.
HEARTBEAT_INTERVAL_MS = 1000
HEARTBEAT_LIVENESS = 3
# a peer sent anything else within this part of an interval needs no heartbeat:
# any frame is a sign of life (llmos.wire.liveness)
HEARTBEAT_QUIET_FRACTION = 0.5

# Socket limits. HWM bounds memory per peer; MAXMSGSIZE bounds one frame, so a
# hostile client cannot make the broker buffer gigabytes. Prompts larger than
# the broker's own limit still fit in a frame and get a TOO_LARGE reply.
SOCKET_LINGER_MS = 500
SOCKET_HWM = 10_000
MAX_FRAME_BYTES = 64 * 1024 * 1024

# Clients: ZMTP heartbeats notice a broker that went silent without closing its
# connection; ZeroMQ's reconnect backoff runs while it is away (see docs/protocol.md,
# "Reconnecting").
CLIENT_HEARTBEAT_INTERVAL_MS = HEARTBEAT_INTERVAL_MS
CLIENT_HEARTBEAT_TIMEOUT_MS = HEARTBEAT_INTERVAL_MS * HEARTBEAT_LIVENESS
CLIENT_RECONNECT_MS = 100  # the first retry after a failed connect
CLIENT_RECONNECT_MAX_MS = 2000  # the retry interval doubles up to this

# Kernel
DEFAULT_BLOCK_SIZE = 16
RESOURCE_TOPIC = b"resources"

# Broker
DEFAULT_TIERS = ("interactive", "standard", "batch")
DEFAULT_TENANT = "default"
DEFAULT_MAX_TOKENS = 64

# Scheduler
SCHEDULER_TIMEOUT_MS = 250  # broker waits this long for a decision, then decides itself
SCHEDULER_RETRY_MS = 2000  # after a timeout, how long before asking the scheduler again


def tcp(port: int, host: str = DEFAULT_HOST) -> str:
    return f"tcp://{host}:{port}"


def bind_all(port: int) -> str:
    return f"tcp://*:{port}"


ERROR_NAMES = {value: name for name, value in pb.ErrorCode.items()}
FINISH_REASON_NAMES = {
    value: name.removeprefix("FINISH_REASON_").lower() for name, value in pb.FinishReason.items()
}
