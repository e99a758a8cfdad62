"""What the broker holds from a peer is bounded: these limits, and the one check
that a name a peer sends is fit to be kept (a dict key, a log word, a status line).

Names are bounded in UTF-8 bytes, since bytes are what the broker holds, and
must be printable so a log line or `llmos status` shows what was sent.
"""

from __future__ import annotations

# a worker's registration
MAX_WORKER_ID_BYTES = 128
MAX_MODELS_PER_WORKER = 64
MAX_MODEL_NAME_BYTES = 256
MAX_NUM_SEQS = 4096
# a phantom that never heartbeats is dead after 3 of these: bounded, so it cannot linger
MAX_HEARTBEAT_INTERVAL_MS = 60_000
MAX_KV_BLOCKS = 1 << 30
MAX_BLOCK_SIZE = 1 << 16
MAX_MODEL_LEN = 16 * 1024 * 1024  # tokens of context

# a client's request
MAX_TENANT_BYTES = 64
MAX_REQUEST_ID_BYTES = 128


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def name_problem(text: str, max_bytes: int) -> str | None:
    """Why `text` cannot be a name the broker keeps, or None when it can."""
    if not text:
        return "is empty"
    num_bytes = utf8_len(text)
    if num_bytes > max_bytes:
        return f"is {num_bytes} bytes; at most {max_bytes} are accepted"
    if not text.isprintable():
        return "has characters that are not printable"
    return None
