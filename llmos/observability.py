"""`/metrics`, `/health` and `/ready` over HTTP for one service, on `--metrics-port`.

A daemon thread serves them; it only reads. Each service hands it a collector
(`prometheus_client` custom collector) that reads the service's counters and
gauges at scrape time, and a readiness check. Reading a Python int or a dict's
length from another thread is safe; a collector that iterates a dict the loop
may change catches the RuntimeError and reports what it had.

    /metrics  Prometheus text format (names under `llmos:`, vLLM's style)
    /health   200 while the process runs
    /ready    200 when the service can serve (broker: a live worker; worker: its
              model loaded and registered), else 503 with the reason
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]  # (is ready, why not)
# a collector or readiness check that fails fails at every scrape: one traceback
# this often, the rest counted
ERROR_LOG_INTERVAL_S = 60.0
METRICS_PORT_HELP = "serve /metrics, /health and /ready over HTTP on this port (0 = off)"
METRICS_HOST_HELP = "interface the metrics port binds"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a scrape every few seconds is not news


class MetricsServer:
    def __init__(self, host: str, port: int, collector: Collector, readiness: Readiness) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self.readiness = readiness
        self.server: WSGIServer = make_server(host, port, self.app, handler_class=_QuietHandler)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self.next_error_log_s = 0.0
        self.num_errors_unlogged = 0

    def start(self) -> MetricsServer:
        self.thread.start()
        log.info("metrics, health and readiness on http://%s:%d", self.server.server_name, self.port)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        try:
            if path == "/metrics":
                status, content_type, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
            elif path == "/health":
                status, content_type, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/ready":
                is_ready, why = self.readiness()
                status = "200 OK" if is_ready else "503 Service Unavailable"
                content_type, body = "text/plain", (b"ready\n" if is_ready else why.encode() + b"\n")
            else:
                status, content_type, body = "404 Not Found", "text/plain", b"/metrics, /health or /ready\n"
        except Exception:  # a bug here must not reach the service
            self.log_failure(path)
            status, content_type, body = "500 Internal Server Error", "text/plain", b"error; logged\n"
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    def log_failure(self, path: str) -> None:
        """Log the exception being handled, at most once per ERROR_LOG_INTERVAL_S."""
        now_s = time.monotonic()
        if now_s < self.next_error_log_s:
            self.num_errors_unlogged += 1
            return
        log.exception("serving %s failed (and %d more since the last line)", path, self.num_errors_unlogged)
        self.next_error_log_s, self.num_errors_unlogged = now_s + ERROR_LOG_INTERVAL_S, 0


def start_metrics(host: str, port: int, collector: Collector, readiness: Readiness) -> MetricsServer | None:
    """The server on `port`, started; None when port is 0 (off)."""
    if port <= 0:
        return None
    return MetricsServer(host, port, collector, readiness).start()


def always_ready() -> tuple[bool, str]:
    return True, ""
