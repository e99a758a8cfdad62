"""Logging set-up shared by every service's main().

`text` (the default) is one readable line per event. `json` is one JSON object
per line for log collectors: time, service, level, logger and message, and the
request id, tenant and worker id where the line passes them
(`log.info(..., extra=log_fields(request_id=..., tenant=...))`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

LOG_FORMATS = ("text", "json")
LOG_FORMAT_HELP = (
    "text, or json: one JSON object per line (service, level, request id, tenant), for collectors"
)
# what a line may carry beside its message, in `extra`
CONTEXT_FIELDS = ("request_id", "tenant", "worker_id", "tier")


def log_fields(**fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: the context fields a JSON line carries."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    assert not unknown, f"not log context fields: {sorted(unknown)}"
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "service": self.service,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup_logging(service: str, log_format: str = "") -> logging.Logger:
    """Log to stderr at LLMOS_LOG_LEVEL in `log_format` (default: LLMOS_LOG_FORMAT, else text)."""
    level = os.environ.get("LLMOS_LOG_LEVEL", "INFO").upper()
    log_format = log_format or os.environ.get("LLMOS_LOG_FORMAT", "text")
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    return logging.getLogger(service)
