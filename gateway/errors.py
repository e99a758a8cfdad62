"""llmos errors -> OpenAI's error responses: `{"error": {message, type, param, code}}`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmos.errors import LlmosError, LlmosTimeout
from llmos.wire import pb

# wire code -> (HTTP status, OpenAI error type); any other code is a 500
_STATUS: dict[int, tuple[int, str]] = {
    pb.QUEUE_FULL: (429, "rate_limit_exceeded"),
    pb.QUOTA_EXCEEDED: (429, "rate_limit_exceeded"),
    pb.INVALID_ARGUMENT: (400, "invalid_request_error"),
    pb.TOO_LARGE: (400, "invalid_request_error"),
    pb.UNKNOWN_MODEL: (404, "invalid_request_error"),
    pb.UNAVAILABLE: (503, "server_error"),
    pb.WORKER_FAILED: (503, "server_error"),
    pb.DEADLINE_EXCEEDED: (504, "timeout"),
    pb.PERMISSION_DENIED: (403, "permission_error"),
}


@dataclass(frozen=True)
class HttpError:
    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    retry_after_s: int = 0

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s else {}


def http_error(error: LlmosError) -> HttpError:
    if isinstance(error, LlmosTimeout):  # the broker is unreachable or silent
        return HttpError(503, str(error), "server_error", "timeout")
    status, kind = _STATUS.get(error.code, (500, "server_error"))
    retry_after_s = max(1, math.ceil(error.retry_after_ms / 1000)) if status == 429 else 0
    return HttpError(status, error.message, kind, error.code_name.lower(), retry_after_s=retry_after_s)


def bad_request(message: str, param: str | None) -> HttpError:
    return HttpError(400, message, "invalid_request_error", "invalid_argument", param)


def too_large(max_bytes: int) -> HttpError:
    return HttpError(413, f"the body is over {max_bytes} bytes", "invalid_request_error", "too_large")


def unauthorized() -> HttpError:
    return HttpError(401, "missing or unknown API key", "invalid_request_error", "invalid_api_key")


def forbidden(message: str) -> HttpError:
    return HttpError(403, message, "permission_error", "permission_denied")
