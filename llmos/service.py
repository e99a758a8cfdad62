"""How every llmos process runs, the same way in each: set up logging, build the
service (sockets and state), stop on SIGTERM or SIGINT, run its loop, close it.

A service is an object with `serve(stopping)`, its one loop, which returns once
`stopping` is set, and `close()`, which releases its sockets. A service that
drains (a worker) also has `drain_requested`: the first SIGTERM or SIGINT sets
it, and the loop returns once what it ran is finished; a second signal sets
`stopping`.

For profiling, `LLMOS_PROFILE_DIR=DIR` runs the loop under cProfile and writes
`DIR/<name>-<pid>.prof` when it stops (read it with `python -m pstats`).
"""

from __future__ import annotations

import contextlib
import cProfile
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

from llmos.logs import setup_logging
from llmos.signals import stop_on_signals


class Service(Protocol):
    def serve(self, stopping: threading.Event) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class DrainingService(Service, Protocol):
    drain_requested: threading.Event


def run_service(name: str, build: Callable[[], Service], log_format: str = "") -> None:
    """Build the service, then serve until a stop signal (for a DrainingService: until
    it has drained, or a second signal). Signals are taken over only once it is built:
    a process still starting up (loading a model, binding) holds nothing that needs a
    clean stop, and dies at once as any program does."""
    setup_logging(name, log_format)
    log = logging.getLogger(name)
    service = build()
    draining = service.drain_requested if isinstance(service, DrainingService) else None
    stopping = stop_on_signals(draining)
    try:
        with profiled(name):
            service.serve(stopping)
    finally:
        service.close()
        log.info("%s stopped", name)


@contextlib.contextmanager
def profiled(name: str) -> Iterator[None]:
    """Under `LLMOS_PROFILE_DIR`, profile the block into DIR/<name>-<pid>.prof."""
    folder = os.environ.get("LLMOS_PROFILE_DIR", "")
    if not folder:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        os.makedirs(folder, exist_ok=True)
        profiler.dump_stats(os.path.join(folder, f"{name}-{os.getpid()}.prof"))
