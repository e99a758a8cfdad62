"""The HTTP side of `llmos bench gateway`: a closed loop of completions through the gateway.

`python -m llmos_bench.http_load SPEC_JSON` keeps `num_live` requests in flight
on one asyncio loop, the same seeded tiny requests the scale workload sends over
ZeroMQ, and prints the same one-line JSON summary as `llmos_bench.driver`, so the
two sides compare line by line. Requests are not streamed: the figure is the
gateway's requests/s.

Each live request has a keep-alive HTTP/1.1 connection of its own, spoken with
asyncio streams: a general HTTP client spends more CPU per request than the
gateway does and would measure itself instead (docs/benchmarks.md), as the
ZeroMQ side's raw-wire driver avoids measuring the SDK.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from llmos_bench.percentiles import percentile
from llmos_bench.stack import SIM_MODEL
from llmos_bench.workload import Job, scale_jobs

REQUEST_TIMEOUT_S = 120.0


class HttpError(Exception):
    """A reply that is not a 200, or a connection that broke."""


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads Content-Length replies."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        payload = json.dumps(body).encode()
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
            length = int(headers.get("content-length", headers.get("Content-Length", "0")))
            content = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            self.close()
            raise HttpError(type(exc).__name__) from None
        status = status_line.split(" ", 2)[1]
        if status != "200":
            raise HttpError(f"HTTP {status}")
        return dict(json.loads(content))

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


class HttpLoop:
    """Completed requests' latencies and the errors met, by HTTP status or exception."""

    def __init__(self, url: str) -> None:
        host_port = urlsplit(url)
        self.host, self.port = host_port.hostname or "127.0.0.1", host_port.port or 80
        self.jct_s: list[float] = []
        self.tokens = 0
        self.errors: dict[str, int] = {}
        self.first_submit_s = float("inf")
        self.last_finish_s = 0.0

    async def one(self, connection: Connection, job: Job) -> None:
        body = {"model": SIM_MODEL, "prompt": job.prompt, "max_tokens": job.max_tokens, "tier": job.tier}
        start_s = time.monotonic()
        self.first_submit_s = min(self.first_submit_s, start_s)
        try:
            answer = await asyncio.wait_for(connection.post_json("/v1/completions", body), REQUEST_TIMEOUT_S)
        except (HttpError, OSError, TimeoutError) as exc:
            self.note_error(str(exc) if isinstance(exc, HttpError) else type(exc).__name__)
            return
        finished_s = time.monotonic()
        self.tokens += answer["usage"]["completion_tokens"]
        self.jct_s.append(finished_s - start_s)
        self.last_finish_s = max(self.last_finish_s, finished_s)

    def note_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    async def run(self, jobs: list[Job], num_live: int) -> None:
        pending = iter(jobs)

        async def lane() -> None:
            connection = Connection(self.host, self.port)
            try:
                for job in pending:  # the lanes share one iterator: each job goes out once
                    await self.one(connection, job)
            finally:
                connection.close()

        await asyncio.gather(*(lane() for _ in range(num_live)))

    def summary(self, submitted: int) -> dict[str, Any]:
        completed = len(self.jct_s)
        return {
            "submitted": submitted,
            "completed": completed,
            "errors": self.errors,
            "unfinished": submitted - completed - sum(self.errors.values()),
            "first_submit_s": self.first_submit_s if completed else 0.0,
            "last_finish_s": self.last_finish_s,
            "tokens": self.tokens,
            "ttft_p50_s": None,  # not streamed
            "ttft_p99_s": None,
            "jct_p50_s": percentile(self.jct_s, 50),
            "jct_p99_s": percentile(self.jct_s, 99),
        }


def run_http_client(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec`: url, requests, num_live, max_tokens, seed, start_at_s (as the driver's)."""
    jobs = list(scale_jobs(spec["requests"], spec["max_tokens"], spec["seed"]))
    loop = HttpLoop(spec["url"])
    time.sleep(max(0.0, spec["start_at_s"] - time.monotonic()))
    asyncio.run(loop.run(jobs, spec["num_live"]))
    return {**loop.summary(len(jobs)), "cpu_s": time.process_time()}


def main() -> None:
    print(json.dumps(run_http_client(json.loads(sys.argv[1]))), flush=True)


if __name__ == "__main__":
    main()
