"""What a worker may claim when it registers (pure functions, no sockets).

A registration makes the broker hold a worker record, its models (each a name
clients then may ask for, and a candidate default model) and slots it will
dispatch into, so every field is checked before any of that happens. The
worker_id must be the connection's identity: the broker addresses a worker by
its identity and finds it by its id, and a worker reports only on requests
dispatched to it, so one name for both keeps a connection from speaking for
another worker.
"""

from __future__ import annotations

from broker.bounds import (
    MAX_BLOCK_SIZE,
    MAX_HEARTBEAT_INTERVAL_MS,
    MAX_KV_BLOCKS,
    MAX_MODEL_LEN,
    MAX_MODEL_NAME_BYTES,
    MAX_MODELS_PER_WORKER,
    MAX_NUM_SEQS,
    MAX_WORKER_ID_BYTES,
    name_problem,
)
from llmos.wire import WireError, pb

_TASK_KINDS = frozenset(pb.TaskKind.values())


def _refuse(message: str) -> WireError:
    return WireError(pb.INVALID_ARGUMENT, f"registration refused: {message}")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise _refuse(f"{name} is {value}; it must be in {low}..{high}")


def check_register(register: pb.WorkerRegister, identity: bytes, holder_identity: bytes | None) -> None:
    """Raise WireError(INVALID_ARGUMENT) unless `register`, arriving from `identity`,
    may be kept; `holder_identity` is the connection already registered under its
    worker_id, if one is."""
    problem = name_problem(register.worker_id, MAX_WORKER_ID_BYTES)
    if problem is not None:
        raise _refuse(f"worker_id {problem}")
    if register.worker_id.encode() != identity:
        raise _refuse("worker_id must be the connection's identity (set the DEALER's IDENTITY to it)")
    if holder_identity is not None and holder_identity != identity:
        raise _refuse(f"worker_id '{register.worker_id}' is held by another live connection")
    _check_range("the number of models", len(register.models), 1, MAX_MODELS_PER_WORKER)
    for model in register.models:
        problem = name_problem(model, MAX_MODEL_NAME_BYTES)
        if problem is not None:
            raise _refuse(f"model name {model[:64]!r} {problem}")
    if register.task not in _TASK_KINDS:
        raise _refuse(f"task {register.task} is not a TaskKind")
    _check_range("max_num_seqs", register.max_num_seqs, 1, MAX_NUM_SEQS)
    _check_range(
        "heartbeat_interval_ms (0 = the broker's)",
        register.heartbeat_interval_ms,
        0,
        MAX_HEARTBEAT_INTERVAL_MS,
    )
    _check_range("kv_blocks_total", register.kv_blocks_total, 0, MAX_KV_BLOCKS)
    _check_range("block_size", register.block_size, 0, MAX_BLOCK_SIZE)
    _check_range("max_model_len (0 = unknown)", register.max_model_len, 0, MAX_MODEL_LEN)
