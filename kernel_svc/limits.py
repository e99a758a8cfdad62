"""What the kernel accepts from a peer: every field that makes it hold memory or
spend time is bounded here, and a message past a bound is refused INVALID_ARGUMENT
before it touches the registry or the ledger.

The bounds sit far above any real worker (a 1,048,576-block cache is 16 M tokens at
16 per block) and far below what would let one message cost the kernel gigabytes.
"""

from __future__ import annotations

from llmos.wire import WireError, pb
from llmos.wire.kv_batch import MAX_KV_BATCH_CHANGES

MAX_WORKER_ID_BYTES = 128
MAX_MODELS = 64
MAX_MODEL_NAME_BYTES = 256
MAX_DEVICE_BYTES = 256
MAX_BLOCKS_PER_WORKER = 1_048_576
MAX_NUM_SEQS = 65_536
MAX_MEMORY_BYTES = 1 << 50  # 1 PiB: no device holds more
MAX_REQUEST_ID_BYTES = 256  # the broker's own bound on request ids
MAX_TENANT_BYTES = 256
MAX_LEASE_MS = 24 * 3600 * 1000  # a lease past a day is a bug, not a plan
# A prefix report lists at most this many hashes (workers send at most 1,024); more is
# refused. Within it, a report is cut to the worker's KV block count (see registry).
MAX_PREFIX_HASHES_PER_REPORT = 65_536
# What a kv_batch's change may be; a batch holds at most MAX_KV_BATCH_CHANGES of them (a
# worker's of one loop turn), and the frame bound holds their bytes.
KV_CHANGES = ("allocate", "free")
# A kv_batch_reply lists at most this many block ids over all its results (about 5 MB):
# every result of an allocation lists all the request's blocks, so a batch that grows
# one large request many times could otherwise have the kernel build gigabytes.
MAX_KV_BATCH_REPLY_BLOCK_IDS = MAX_BLOCKS_PER_WORKER


def invalid(what: str, request_id: str = "") -> WireError:
    return WireError(pb.INVALID_ARGUMENT, what, request_id)


def num_utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_worker_id(worker_id: str) -> None:
    if not worker_id:
        raise invalid("a worker_id is required")
    if num_utf8_bytes(worker_id) > MAX_WORKER_ID_BYTES or not worker_id.isprintable():
        raise invalid(f"worker_id must be 1 to {MAX_WORKER_ID_BYTES} bytes of printable characters")


def check_register(message: pb.KernelRegister, block_size: int) -> None:
    """Refuse a registration whose fields are out of range; the checks that cost
    nothing (counts, sizes) come before any that walk a list."""
    check_worker_id(message.worker_id)
    if not 1 <= len(message.models) <= MAX_MODELS:
        raise invalid(f"kernel_register needs 1 to {MAX_MODELS} models, not {len(message.models)}")
    if any(not model or num_utf8_bytes(model) > MAX_MODEL_NAME_BYTES for model in message.models):
        raise invalid(f"a model name must be 1 to {MAX_MODEL_NAME_BYTES} bytes")
    if num_utf8_bytes(message.device) > MAX_DEVICE_BYTES:
        raise invalid(f"device must be at most {MAX_DEVICE_BYTES} bytes")
    num_blocks = message.kv_capacity_tokens // block_size
    if num_blocks > MAX_BLOCKS_PER_WORKER:
        raise invalid(
            f"kv_capacity_tokens {message.kv_capacity_tokens} makes {num_blocks} KV blocks; "
            f"at most {MAX_BLOCKS_PER_WORKER} per worker"
        )
    if message.max_num_seqs > MAX_NUM_SEQS:
        raise invalid(f"max_num_seqs must be at most {MAX_NUM_SEQS}")
    if max(message.memory_bytes_total, message.memory_bytes_used) > MAX_MEMORY_BYTES:
        raise invalid(f"memory fields must be at most {MAX_MEMORY_BYTES} bytes")


def check_request_fields(request_id: str, tenant: str = "") -> None:
    if not request_id:
        raise invalid("a request_id is required")
    if num_utf8_bytes(request_id) > MAX_REQUEST_ID_BYTES:
        raise invalid(f"request_id must be at most {MAX_REQUEST_ID_BYTES} bytes")
    if num_utf8_bytes(tenant) > MAX_TENANT_BYTES:
        raise invalid(f"tenant must be at most {MAX_TENANT_BYTES} bytes", request_id)


def check_allocate(message: pb.KvAllocate) -> None:
    check_request_fields(message.request_id, message.tenant)
    if message.num_blocks > MAX_BLOCKS_PER_WORKER:
        raise invalid(f"num_blocks must be at most {MAX_BLOCKS_PER_WORKER}", message.request_id)
    if message.lease_ms > MAX_LEASE_MS:
        raise invalid(f"lease_ms must be at most {MAX_LEASE_MS}", message.request_id)


def check_kv_batch(message: pb.KvBatch) -> None:
    """Refuse a batch past its bound, or holding a change that is neither an allocation
    nor a free, whole: nothing of it is applied."""
    if len(message.changes) > MAX_KV_BATCH_CHANGES:
        raise invalid(f"kv_batch holds {len(message.changes)} changes; at most {MAX_KV_BATCH_CHANGES}")
    for index, change in enumerate(message.changes):
        if change.WhichOneof("change") not in KV_CHANGES:
            raise invalid(f"kv_batch change {index} is neither an allocate nor a free")


def check_prefix_report(message: pb.KvPrefixReport) -> None:
    # len() of a repeated field is O(1): the hashes are never copied before this check
    if len(message.block_hashes) > MAX_PREFIX_HASHES_PER_REPORT:
        raise invalid(
            f"kv_prefix_report lists {len(message.block_hashes)} hashes; "
            f"at most {MAX_PREFIX_HASHES_PER_REPORT}"
        )
