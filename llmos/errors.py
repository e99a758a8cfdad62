"""Typed exceptions for every `pb.ErrorCode`, so callers can write
`except QueueFull as exc: sleep(exc.retry_after_ms / 1000)`.

The table `_ERRORS` is the one place that names each code's class and says
whether the code blames the request (a client error: retrying the same request
will fail again) or the system (retrying later may work). `llmos submit` maps
that to its exit status.
"""

from __future__ import annotations

from llmos.wire import pb
from llmos.wire.constants import ERROR_NAMES


class LlmosError(Exception):
    """A coded refusal or failure from an llmos service (or the client itself)."""

    is_client_error: bool = False

    def __init__(self, code: int, message: str, request_id: str = "", retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after_ms = retry_after_ms

    @property
    def code_name(self) -> str:
        return ERROR_NAMES.get(self.code, f"ERROR_{self.code}")

    def __str__(self) -> str:
        return f"{self.code_name}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code_name}, message={self.message!r}, "
            f"request_id={self.request_id!r}, retry_after_ms={self.retry_after_ms})"
        )


class LlmosTimeout(LlmosError):
    """The client waited `timeout_s` and nothing arrived. Not a wire code: the
    service may still be working on the request (or may not be running)."""

    def __init__(self, message: str, request_id: str = "") -> None:
        super().__init__(pb.ERROR_CODE_UNSPECIFIED, message, request_id)

    @property
    def code_name(self) -> str:
        return "TIMEOUT"


class CodedError(LlmosError):
    """The base of the one class per wire code in `ERROR_CLASSES`; its `CODE` is the code."""

    CODE: int

    def __init__(self, message: str, request_id: str = "", retry_after_ms: int = 0) -> None:
        super().__init__(self.CODE, message, request_id, retry_after_ms)


# code -> (class name, is_client_error). Every pb.ErrorCode but UNSPECIFIED is here.
_ERRORS: dict[int, tuple[str, bool]] = {
    pb.MALFORMED_FRAME: ("MalformedFrame", True),
    pb.UNSUPPORTED_VERSION: ("UnsupportedVersion", True),
    pb.UNKNOWN_MESSAGE: ("UnknownMessage", True),
    pb.INVALID_ARGUMENT: ("InvalidArgument", True),
    pb.UNKNOWN_MODEL: ("UnknownModel", True),
    pb.TOO_LARGE: ("TooLarge", True),
    pb.QUEUE_FULL: ("QueueFull", False),
    pb.QUOTA_EXCEEDED: ("QuotaExceeded", False),
    pb.DEADLINE_EXCEEDED: ("DeadlineExceeded", False),
    pb.UNKNOWN_REQUEST: ("UnknownRequest", True),
    pb.DUPLICATE_REQUEST: ("DuplicateRequest", True),
    pb.WORKER_FAILED: ("WorkerFailed", False),
    pb.UNAVAILABLE: ("Unavailable", False),
    pb.INTERNAL: ("Internal", False),
    pb.NOT_ENOUGH_BLOCKS: ("NotEnoughBlocks", False),
    pb.UNKNOWN_WORKER: ("UnknownWorker", False),
    pb.PERMISSION_DENIED: ("PermissionDenied", True),
}


def _make_error_class(code: int, name: str, is_client_error: bool) -> type[CodedError]:
    doc = f"ErrorCode {ERROR_NAMES[code]}: raise as {name}(message, request_id='', retry_after_ms=0)."
    return type(
        name,
        (CodedError,),
        {
            "__doc__": doc,
            "__module__": __name__,
            "CODE": code,
            "is_client_error": is_client_error,
        },
    )


ERROR_CLASSES: dict[int, type[CodedError]] = {
    code: _make_error_class(code, name, is_client_error) for code, (name, is_client_error) in _ERRORS.items()
}
assert set(ERROR_CLASSES) == set(ERROR_NAMES) - {pb.ERROR_CODE_UNSPECIFIED}, (
    "every pb.ErrorCode needs a row in _ERRORS"
)

# Named module attributes, so `from llmos.errors import QueueFull` works and
# readers (and linters) can see every class.
MalformedFrame = ERROR_CLASSES[pb.MALFORMED_FRAME]
UnsupportedVersion = ERROR_CLASSES[pb.UNSUPPORTED_VERSION]
UnknownMessage = ERROR_CLASSES[pb.UNKNOWN_MESSAGE]
InvalidArgument = ERROR_CLASSES[pb.INVALID_ARGUMENT]
UnknownModel = ERROR_CLASSES[pb.UNKNOWN_MODEL]
TooLarge = ERROR_CLASSES[pb.TOO_LARGE]
QueueFull = ERROR_CLASSES[pb.QUEUE_FULL]
QuotaExceeded = ERROR_CLASSES[pb.QUOTA_EXCEEDED]
DeadlineExceeded = ERROR_CLASSES[pb.DEADLINE_EXCEEDED]
UnknownRequest = ERROR_CLASSES[pb.UNKNOWN_REQUEST]
DuplicateRequest = ERROR_CLASSES[pb.DUPLICATE_REQUEST]
WorkerFailed = ERROR_CLASSES[pb.WORKER_FAILED]
Unavailable = ERROR_CLASSES[pb.UNAVAILABLE]
Internal = ERROR_CLASSES[pb.INTERNAL]
NotEnoughBlocks = ERROR_CLASSES[pb.NOT_ENOUGH_BLOCKS]
UnknownWorker = ERROR_CLASSES[pb.UNKNOWN_WORKER]
PermissionDenied = ERROR_CLASSES[pb.PERMISSION_DENIED]


def error_from_proto(error: pb.Error) -> LlmosError:
    """The typed exception for a wire `Error` (plain LlmosError for an unknown code)."""
    cls = ERROR_CLASSES.get(error.code)
    if cls is None:
        return LlmosError(error.code, error.message, error.request_id, error.retry_after_ms)
    return cls(error.message, error.request_id, error.retry_after_ms)
