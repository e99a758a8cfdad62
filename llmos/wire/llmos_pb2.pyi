from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtocolVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_VERSION_UNSPECIFIED: _ClassVar[ProtocolVersion]
    PROTOCOL_VERSION_CURRENT: _ClassVar[ProtocolVersion]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    MALFORMED_FRAME: _ClassVar[ErrorCode]
    UNSUPPORTED_VERSION: _ClassVar[ErrorCode]
    UNKNOWN_MESSAGE: _ClassVar[ErrorCode]
    INVALID_ARGUMENT: _ClassVar[ErrorCode]
    UNKNOWN_MODEL: _ClassVar[ErrorCode]
    TOO_LARGE: _ClassVar[ErrorCode]
    QUEUE_FULL: _ClassVar[ErrorCode]
    QUOTA_EXCEEDED: _ClassVar[ErrorCode]
    DEADLINE_EXCEEDED: _ClassVar[ErrorCode]
    UNKNOWN_REQUEST: _ClassVar[ErrorCode]
    DUPLICATE_REQUEST: _ClassVar[ErrorCode]
    WORKER_FAILED: _ClassVar[ErrorCode]
    UNAVAILABLE: _ClassVar[ErrorCode]
    INTERNAL: _ClassVar[ErrorCode]
    NOT_ENOUGH_BLOCKS: _ClassVar[ErrorCode]
    UNKNOWN_WORKER: _ClassVar[ErrorCode]
    PERMISSION_DENIED: _ClassVar[ErrorCode]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
    FINISH_REASON_ERROR: _ClassVar[FinishReason]
    FINISH_REASON_PREEMPTED: _ClassVar[FinishReason]
    FINISH_REASON_DEADLINE: _ClassVar[FinishReason]

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_GENERATE: _ClassVar[TaskKind]
    TASK_KIND_EMBED: _ClassVar[TaskKind]
    TASK_KIND_CLASSIFY: _ClassVar[TaskKind]
PROTOCOL_VERSION_UNSPECIFIED: ProtocolVersion
PROTOCOL_VERSION_CURRENT: ProtocolVersion
ERROR_CODE_UNSPECIFIED: ErrorCode
MALFORMED_FRAME: ErrorCode
UNSUPPORTED_VERSION: ErrorCode
UNKNOWN_MESSAGE: ErrorCode
INVALID_ARGUMENT: ErrorCode
UNKNOWN_MODEL: ErrorCode
TOO_LARGE: ErrorCode
QUEUE_FULL: ErrorCode
QUOTA_EXCEEDED: ErrorCode
DEADLINE_EXCEEDED: ErrorCode
UNKNOWN_REQUEST: ErrorCode
DUPLICATE_REQUEST: ErrorCode
WORKER_FAILED: ErrorCode
UNAVAILABLE: ErrorCode
INTERNAL: ErrorCode
NOT_ENOUGH_BLOCKS: ErrorCode
UNKNOWN_WORKER: ErrorCode
PERMISSION_DENIED: ErrorCode
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_CANCELLED: FinishReason
FINISH_REASON_ERROR: FinishReason
FINISH_REASON_PREEMPTED: FinishReason
FINISH_REASON_DEADLINE: FinishReason
TASK_KIND_GENERATE: TaskKind
TASK_KIND_EMBED: TaskKind
TASK_KIND_CLASSIFY: TaskKind

class SamplingParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "model", "prompt", "sampling", "tier", "tenant", "deadline_ms", "is_resend", "resume_from_index", "is_final_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    IS_RESEND_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_INDEX_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    prompt: str
    sampling: SamplingParams
    tier: str
    tenant: str
    deadline_ms: int
    is_resend: bool
    resume_from_index: int
    is_final_only: bool
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., tier: _Optional[str] = ..., tenant: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., is_resend: _Optional[bool] = ..., resume_from_index: _Optional[int] = ..., is_final_only: _Optional[bool] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("request_id", "model", "inputs", "tier", "tenant", "deadline_ms", "is_resend")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    IS_RESEND_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    tier: str
    tenant: str
    deadline_ms: int
    is_resend: bool
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., tier: _Optional[str] = ..., tenant: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., is_resend: _Optional[bool] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResult(_message.Message):
    __slots__ = ("request_id", "embeddings", "usage", "model", "worker_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    usage: Usage
    model: str
    worker_id: str
    def __init__(self, request_id: _Optional[str] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., model: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("request_id", "model", "inputs", "tier", "tenant", "deadline_ms", "is_resend")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    IS_RESEND_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    tier: str
    tenant: str
    deadline_ms: int
    is_resend: bool
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., tier: _Optional[str] = ..., tenant: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., is_resend: _Optional[bool] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("label", "score", "scores")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    scores: _containers.RepeatedCompositeFieldContainer[LabelScore]
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., scores: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ...) -> None: ...

class ClassifyResult(_message.Message):
    __slots__ = ("request_id", "classifications", "usage", "model", "worker_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    classifications: _containers.RepeatedCompositeFieldContainer[Classification]
    usage: Usage
    model: str
    worker_id: str
    def __init__(self, request_id: _Optional[str] = ..., classifications: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., model: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("request_id", "tier", "queue_position")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tier: str
    queue_position: int
    def __init__(self, request_id: _Optional[str] = ..., tier: _Optional[str] = ..., queue_position: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "request_id", "retry_after_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    request_id: str
    retry_after_ms: int
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., request_id: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("request_id", "token_ids", "text", "index")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    index: int
    def __init__(self, request_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "generated_tokens", "queue_time_s", "time_to_first_token_s", "total_time_s")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_S_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_S_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    generated_tokens: int
    queue_time_s: float
    time_to_first_token_s: float
    total_time_s: float
    def __init__(self, prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., queue_time_s: _Optional[float] = ..., time_to_first_token_s: _Optional[float] = ..., total_time_s: _Optional[float] = ...) -> None: ...

class GenerateResult(_message.Message):
    __slots__ = ("request_id", "text", "token_ids", "finish_reason", "usage", "model", "worker_id", "num_restarts")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: FinishReason
    usage: Usage
    model: str
    worker_id: str
    num_restarts: int
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., model: _Optional[str] = ..., worker_id: _Optional[str] = ..., num_restarts: _Optional[int] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierStatus(_message.Message):
    __slots__ = ("tier", "depth", "max_depth", "num_running", "num_answers", "answer_fill")
    TIER_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NUM_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FILL_FIELD_NUMBER: _ClassVar[int]
    tier: str
    depth: int
    max_depth: int
    num_running: int
    num_answers: int
    answer_fill: float
    def __init__(self, tier: _Optional[str] = ..., depth: _Optional[int] = ..., max_depth: _Optional[int] = ..., num_running: _Optional[int] = ..., num_answers: _Optional[int] = ..., answer_fill: _Optional[float] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "models", "num_running", "max_num_seqs", "device", "tokens_per_s", "task", "is_draining")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    IS_DRAINING_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    num_running: int
    max_num_seqs: int
    device: str
    tokens_per_s: float
    task: TaskKind
    is_draining: bool
    def __init__(self, worker_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., num_running: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., device: _Optional[str] = ..., tokens_per_s: _Optional[float] = ..., task: _Optional[_Union[TaskKind, str]] = ..., is_draining: _Optional[bool] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("tiers", "workers", "num_running", "scheduler_online", "scheduler_policy", "num_completed", "num_rejected", "tokens_per_s", "num_refused_messages", "num_journalled")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_ONLINE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_POLICY_FIELD_NUMBER: _ClassVar[int]
    NUM_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    NUM_REJECTED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    NUM_REFUSED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NUM_JOURNALLED_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[TierStatus]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    num_running: int
    scheduler_online: bool
    scheduler_policy: str
    num_completed: int
    num_rejected: int
    tokens_per_s: float
    num_refused_messages: int
    num_journalled: int
    def __init__(self, tiers: _Optional[_Iterable[_Union[TierStatus, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., num_running: _Optional[int] = ..., scheduler_online: _Optional[bool] = ..., scheduler_policy: _Optional[str] = ..., num_completed: _Optional[int] = ..., num_rejected: _Optional[int] = ..., tokens_per_s: _Optional[float] = ..., num_refused_messages: _Optional[int] = ..., num_journalled: _Optional[int] = ...) -> None: ...

class WorkerRegister(_message.Message):
    __slots__ = ("worker_id", "models", "device", "max_num_seqs", "kv_blocks_total", "block_size", "heartbeat_interval_ms", "task", "max_model_len")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    device: str
    max_num_seqs: int
    kv_blocks_total: int
    block_size: int
    heartbeat_interval_ms: int
    task: TaskKind
    max_model_len: int
    def __init__(self, worker_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., max_num_seqs: _Optional[int] = ..., kv_blocks_total: _Optional[int] = ..., block_size: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., task: _Optional[_Union[TaskKind, str]] = ..., max_model_len: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("worker_id", "num_running", "kv_blocks_used")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    num_running: int
    kv_blocks_used: int
    def __init__(self, worker_id: _Optional[str] = ..., num_running: _Optional[int] = ..., kv_blocks_used: _Optional[int] = ...) -> None: ...

class Disconnect(_message.Message):
    __slots__ = ("worker_id", "reason")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    reason: str
    def __init__(self, worker_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Dispatch(_message.Message):
    __slots__ = ("request_id", "model", "prompt", "sampling", "generated_token_ids", "emitted_text_chars", "tier", "tenant", "kind", "inputs", "is_final_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    EMITTED_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    prompt: str
    sampling: SamplingParams
    generated_token_ids: _containers.RepeatedScalarFieldContainer[int]
    emitted_text_chars: int
    tier: str
    tenant: str
    kind: TaskKind
    inputs: _containers.RepeatedScalarFieldContainer[str]
    is_final_only: bool
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., generated_token_ids: _Optional[_Iterable[int]] = ..., emitted_text_chars: _Optional[int] = ..., tier: _Optional[str] = ..., tenant: _Optional[str] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., inputs: _Optional[_Iterable[str]] = ..., is_final_only: _Optional[bool] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class DrainWorker(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class DrainReply(_message.Message):
    __slots__ = ("worker_id", "num_running")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    num_running: int
    def __init__(self, worker_id: _Optional[str] = ..., num_running: _Optional[int] = ...) -> None: ...

class Preempt(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class RequestDelta(_message.Message):
    __slots__ = ("request_id", "token_ids", "text", "prompt_tokens", "is_finished", "finish_reason", "error", "embeddings", "classifications")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    prompt_tokens: int
    is_finished: bool
    finish_reason: FinishReason
    error: Error
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    classifications: _containers.RepeatedCompositeFieldContainer[Classification]
    def __init__(self, request_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., is_finished: _Optional[bool] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., classifications: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ...) -> None: ...

class StepProgress(_message.Message):
    __slots__ = ("worker_id", "deltas")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    deltas: _containers.RepeatedCompositeFieldContainer[RequestDelta]
    def __init__(self, worker_id: _Optional[str] = ..., deltas: _Optional[_Iterable[_Union[RequestDelta, _Mapping]]] = ...) -> None: ...

class KernelRegister(_message.Message):
    __slots__ = ("worker_id", "models", "device", "memory_bytes_total", "memory_bytes_used", "kv_capacity_tokens", "max_num_seqs")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_USED_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    device: str
    memory_bytes_total: int
    memory_bytes_used: int
    kv_capacity_tokens: int
    max_num_seqs: int
    def __init__(self, worker_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., memory_bytes_total: _Optional[int] = ..., memory_bytes_used: _Optional[int] = ..., kv_capacity_tokens: _Optional[int] = ..., max_num_seqs: _Optional[int] = ...) -> None: ...

class KernelHeartbeat(_message.Message):
    __slots__ = ("worker_id", "num_running")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    num_running: int
    def __init__(self, worker_id: _Optional[str] = ..., num_running: _Optional[int] = ...) -> None: ...

class KvPrefixReport(_message.Message):
    __slots__ = ("worker_id", "block_hashes")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    block_hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, worker_id: _Optional[str] = ..., block_hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class KvAllocate(_message.Message):
    __slots__ = ("worker_id", "request_id", "num_blocks", "lease_ms", "tenant")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    request_id: str
    num_blocks: int
    lease_ms: int
    tenant: str
    def __init__(self, worker_id: _Optional[str] = ..., request_id: _Optional[str] = ..., num_blocks: _Optional[int] = ..., lease_ms: _Optional[int] = ..., tenant: _Optional[str] = ...) -> None: ...

class KvFree(_message.Message):
    __slots__ = ("worker_id", "request_id")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    request_id: str
    def __init__(self, worker_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class KvBatch(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[KvChange]
    def __init__(self, changes: _Optional[_Iterable[_Union[KvChange, _Mapping]]] = ...) -> None: ...

class KvChange(_message.Message):
    __slots__ = ("allocate", "free")
    ALLOCATE_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    allocate: KvAllocate
    free: KvFree
    def __init__(self, allocate: _Optional[_Union[KvAllocate, _Mapping]] = ..., free: _Optional[_Union[KvFree, _Mapping]] = ...) -> None: ...

class KvBatchReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[KvResult]
    def __init__(self, results: _Optional[_Iterable[_Union[KvResult, _Mapping]]] = ...) -> None: ...

class KvResult(_message.Message):
    __slots__ = ("reply", "error")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    reply: KernelReply
    error: Error
    def __init__(self, reply: _Optional[_Union[KernelReply, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class ResourceQuery(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KernelReply(_message.Message):
    __slots__ = ("request_id", "block_ids", "block_size", "num_free_blocks", "kv_blocks_total")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    block_ids: _containers.RepeatedScalarFieldContainer[int]
    block_size: int
    num_free_blocks: int
    kv_blocks_total: int
    def __init__(self, request_id: _Optional[str] = ..., block_ids: _Optional[_Iterable[int]] = ..., block_size: _Optional[int] = ..., num_free_blocks: _Optional[int] = ..., kv_blocks_total: _Optional[int] = ...) -> None: ...

class WorkerResources(_message.Message):
    __slots__ = ("worker_id", "models", "device", "memory_bytes_total", "memory_bytes_used", "kv_blocks_total", "kv_blocks_used", "num_running", "max_num_seqs", "num_requests_holding_blocks", "cached_prefix_hashes")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_USED_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    NUM_REQUESTS_HOLDING_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PREFIX_HASHES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    device: str
    memory_bytes_total: int
    memory_bytes_used: int
    kv_blocks_total: int
    kv_blocks_used: int
    num_running: int
    max_num_seqs: int
    num_requests_holding_blocks: int
    cached_prefix_hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, worker_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., memory_bytes_total: _Optional[int] = ..., memory_bytes_used: _Optional[int] = ..., kv_blocks_total: _Optional[int] = ..., kv_blocks_used: _Optional[int] = ..., num_running: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., num_requests_holding_blocks: _Optional[int] = ..., cached_prefix_hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class TenantUsage(_message.Message):
    __slots__ = ("tenant", "kv_blocks_used", "num_requests_holding_blocks")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    NUM_REQUESTS_HOLDING_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    kv_blocks_used: int
    num_requests_holding_blocks: int
    def __init__(self, tenant: _Optional[str] = ..., kv_blocks_used: _Optional[int] = ..., num_requests_holding_blocks: _Optional[int] = ...) -> None: ...

class ResourceView(_message.Message):
    __slots__ = ("version", "block_size", "workers", "published_at_s", "tenants")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_S_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    block_size: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerResources]
    published_at_s: float
    tenants: _containers.RepeatedCompositeFieldContainer[TenantUsage]
    def __init__(self, version: _Optional[int] = ..., block_size: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerResources, _Mapping]]] = ..., published_at_s: _Optional[float] = ..., tenants: _Optional[_Iterable[_Union[TenantUsage, _Mapping]]] = ...) -> None: ...

class PendingRequest(_message.Message):
    __slots__ = ("request_id", "tier", "tier_rank", "tenant", "model", "prompt_chars", "max_tokens", "arrival_seq", "generated_tokens", "prefix_hashes", "waited_s", "deadline_in_s")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TIER_RANK_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HASHES_FIELD_NUMBER: _ClassVar[int]
    WAITED_S_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_IN_S_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tier: str
    tier_rank: int
    tenant: str
    model: str
    prompt_chars: int
    max_tokens: int
    arrival_seq: int
    generated_tokens: int
    prefix_hashes: _containers.RepeatedScalarFieldContainer[int]
    waited_s: float
    deadline_in_s: float
    def __init__(self, request_id: _Optional[str] = ..., tier: _Optional[str] = ..., tier_rank: _Optional[int] = ..., tenant: _Optional[str] = ..., model: _Optional[str] = ..., prompt_chars: _Optional[int] = ..., max_tokens: _Optional[int] = ..., arrival_seq: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., prefix_hashes: _Optional[_Iterable[int]] = ..., waited_s: _Optional[float] = ..., deadline_in_s: _Optional[float] = ...) -> None: ...

class RunningRequest(_message.Message):
    __slots__ = ("request_id", "worker_id", "tier", "tier_rank", "tenant", "prompt_chars", "generated_tokens", "max_tokens", "arrival_seq", "running_s", "tokens_since_dispatch")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TIER_RANK_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    RUNNING_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SINCE_DISPATCH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    worker_id: str
    tier: str
    tier_rank: int
    tenant: str
    prompt_chars: int
    generated_tokens: int
    max_tokens: int
    arrival_seq: int
    running_s: float
    tokens_since_dispatch: int
    def __init__(self, request_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., tier: _Optional[str] = ..., tier_rank: _Optional[int] = ..., tenant: _Optional[str] = ..., prompt_chars: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ..., arrival_seq: _Optional[int] = ..., running_s: _Optional[float] = ..., tokens_since_dispatch: _Optional[int] = ...) -> None: ...

class WorkerSlots(_message.Message):
    __slots__ = ("worker_id", "models", "num_running", "max_num_seqs", "tokens_per_s")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    num_running: int
    max_num_seqs: int
    tokens_per_s: float
    def __init__(self, worker_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., num_running: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., tokens_per_s: _Optional[float] = ...) -> None: ...

class TierAnswers(_message.Message):
    __slots__ = ("tier", "num_answers", "mean_fill")
    TIER_FIELD_NUMBER: _ClassVar[int]
    NUM_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    MEAN_FILL_FIELD_NUMBER: _ClassVar[int]
    tier: str
    num_answers: int
    mean_fill: float
    def __init__(self, tier: _Optional[str] = ..., num_answers: _Optional[int] = ..., mean_fill: _Optional[float] = ...) -> None: ...

class ScheduleRequest(_message.Message):
    __slots__ = ("batch_id", "pending", "workers", "running", "tier_answers", "leaving")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    TIER_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    pending: _containers.RepeatedCompositeFieldContainer[PendingRequest]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerSlots]
    running: _containers.RepeatedCompositeFieldContainer[RunningRequest]
    tier_answers: _containers.RepeatedCompositeFieldContainer[TierAnswers]
    leaving: _containers.RepeatedCompositeFieldContainer[RunningRequest]
    def __init__(self, batch_id: _Optional[int] = ..., pending: _Optional[_Iterable[_Union[PendingRequest, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[WorkerSlots, _Mapping]]] = ..., running: _Optional[_Iterable[_Union[RunningRequest, _Mapping]]] = ..., tier_answers: _Optional[_Iterable[_Union[TierAnswers, _Mapping]]] = ..., leaving: _Optional[_Iterable[_Union[RunningRequest, _Mapping]]] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("request_id", "worker_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    worker_id: str
    def __init__(self, request_id: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class ScheduleDecision(_message.Message):
    __slots__ = ("batch_id", "placements", "policy", "decision_us", "preemptions")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DECISION_US_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    placements: _containers.RepeatedCompositeFieldContainer[Placement]
    policy: str
    decision_us: int
    preemptions: _containers.RepeatedCompositeFieldContainer[Preemption]
    def __init__(self, batch_id: _Optional[int] = ..., placements: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ..., policy: _Optional[str] = ..., decision_us: _Optional[int] = ..., preemptions: _Optional[_Iterable[_Union[Preemption, _Mapping]]] = ...) -> None: ...

class Preemption(_message.Message):
    __slots__ = ("request_id", "worker_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    worker_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetPolicy(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: str
    def __init__(self, policy: _Optional[str] = ...) -> None: ...

class PolicyStatus(_message.Message):
    __slots__ = ("policy", "available")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    policy: str
    available: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, policy: _Optional[str] = ..., available: _Optional[_Iterable[str]] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("version", "generate", "accepted", "chunk", "result", "error", "cancel", "status_request", "status_reply", "embed", "embed_result", "classify", "classify_result", "drain_worker", "drain_reply", "worker_register", "heartbeat", "disconnect", "dispatch", "progress", "preempt", "drain", "kernel_register", "kernel_heartbeat", "kv_allocate", "kv_free", "resource_query", "kernel_reply", "resource_view", "kv_prefix_report", "kv_batch", "kv_batch_reply", "schedule_request", "schedule_decision", "set_policy", "policy_status")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_REQUEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_REPLY_FIELD_NUMBER: _ClassVar[int]
    EMBED_FIELD_NUMBER: _ClassVar[int]
    EMBED_RESULT_FIELD_NUMBER: _ClassVar[int]
    CLASSIFY_FIELD_NUMBER: _ClassVar[int]
    CLASSIFY_RESULT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_WORKER_FIELD_NUMBER: _ClassVar[int]
    DRAIN_REPLY_FIELD_NUMBER: _ClassVar[int]
    WORKER_REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PREEMPT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    KERNEL_REGISTER_FIELD_NUMBER: _ClassVar[int]
    KERNEL_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    KV_ALLOCATE_FIELD_NUMBER: _ClassVar[int]
    KV_FREE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_QUERY_FIELD_NUMBER: _ClassVar[int]
    KERNEL_REPLY_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VIEW_FIELD_NUMBER: _ClassVar[int]
    KV_PREFIX_REPORT_FIELD_NUMBER: _ClassVar[int]
    KV_BATCH_FIELD_NUMBER: _ClassVar[int]
    KV_BATCH_REPLY_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_DECISION_FIELD_NUMBER: _ClassVar[int]
    SET_POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_STATUS_FIELD_NUMBER: _ClassVar[int]
    version: int
    generate: GenerateRequest
    accepted: Accepted
    chunk: TokenChunk
    result: GenerateResult
    error: Error
    cancel: Cancel
    status_request: StatusRequest
    status_reply: StatusReply
    embed: EmbedRequest
    embed_result: EmbedResult
    classify: ClassifyRequest
    classify_result: ClassifyResult
    drain_worker: DrainWorker
    drain_reply: DrainReply
    worker_register: WorkerRegister
    heartbeat: Heartbeat
    disconnect: Disconnect
    dispatch: Dispatch
    progress: StepProgress
    preempt: Preempt
    drain: Drain
    kernel_register: KernelRegister
    kernel_heartbeat: KernelHeartbeat
    kv_allocate: KvAllocate
    kv_free: KvFree
    resource_query: ResourceQuery
    kernel_reply: KernelReply
    resource_view: ResourceView
    kv_prefix_report: KvPrefixReport
    kv_batch: KvBatch
    kv_batch_reply: KvBatchReply
    schedule_request: ScheduleRequest
    schedule_decision: ScheduleDecision
    set_policy: SetPolicy
    policy_status: PolicyStatus
    def __init__(self, version: _Optional[int] = ..., generate: _Optional[_Union[GenerateRequest, _Mapping]] = ..., accepted: _Optional[_Union[Accepted, _Mapping]] = ..., chunk: _Optional[_Union[TokenChunk, _Mapping]] = ..., result: _Optional[_Union[GenerateResult, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., status_request: _Optional[_Union[StatusRequest, _Mapping]] = ..., status_reply: _Optional[_Union[StatusReply, _Mapping]] = ..., embed: _Optional[_Union[EmbedRequest, _Mapping]] = ..., embed_result: _Optional[_Union[EmbedResult, _Mapping]] = ..., classify: _Optional[_Union[ClassifyRequest, _Mapping]] = ..., classify_result: _Optional[_Union[ClassifyResult, _Mapping]] = ..., drain_worker: _Optional[_Union[DrainWorker, _Mapping]] = ..., drain_reply: _Optional[_Union[DrainReply, _Mapping]] = ..., worker_register: _Optional[_Union[WorkerRegister, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., disconnect: _Optional[_Union[Disconnect, _Mapping]] = ..., dispatch: _Optional[_Union[Dispatch, _Mapping]] = ..., progress: _Optional[_Union[StepProgress, _Mapping]] = ..., preempt: _Optional[_Union[Preempt, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., kernel_register: _Optional[_Union[KernelRegister, _Mapping]] = ..., kernel_heartbeat: _Optional[_Union[KernelHeartbeat, _Mapping]] = ..., kv_allocate: _Optional[_Union[KvAllocate, _Mapping]] = ..., kv_free: _Optional[_Union[KvFree, _Mapping]] = ..., resource_query: _Optional[_Union[ResourceQuery, _Mapping]] = ..., kernel_reply: _Optional[_Union[KernelReply, _Mapping]] = ..., resource_view: _Optional[_Union[ResourceView, _Mapping]] = ..., kv_prefix_report: _Optional[_Union[KvPrefixReport, _Mapping]] = ..., kv_batch: _Optional[_Union[KvBatch, _Mapping]] = ..., kv_batch_reply: _Optional[_Union[KvBatchReply, _Mapping]] = ..., schedule_request: _Optional[_Union[ScheduleRequest, _Mapping]] = ..., schedule_decision: _Optional[_Union[ScheduleDecision, _Mapping]] = ..., set_policy: _Optional[_Union[SetPolicy, _Mapping]] = ..., policy_status: _Optional[_Union[PolicyStatus, _Mapping]] = ...) -> None: ...
