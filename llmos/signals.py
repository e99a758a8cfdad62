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


def event_on_sighup() -> threading.Event:
    """An event set by SIGHUP (reload the allowlist); the loop clears it when it reloads.
    Outside the main thread (a service built in a test's thread) there is none to hear it."""
    reload_requested = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda signum, frame: reload_requested.set())
    return reload_requested


def interrupt_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so a command that started
    processes stops them on its way out (`finally`, `with`) when it is killed politely.
    Only the main thread hears signals: from another (a command run in a test's
    thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
