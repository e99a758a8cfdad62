"""Clean shutdown for every service loop."""

import signal
import threading


def stop_on_signals(draining: threading.Event | None = None) -> threading.Event:
    """An event set by SIGTERM or SIGINT; a service loop checks it every poll.

    With `draining` (a worker's), the first signal sets `draining` instead: the
    service finishes what it runs, takes nothing new, and returns from its loop
    when done. A second signal sets the returned event: leave at once."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if draining is not None and not draining.is_set():
            draining.set()
        else:
            stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return stopping
