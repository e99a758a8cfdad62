"""The engine thread's prefix reports: held back to one per PREFIX_REPORT_INTERVAL_S,
and an idle thread still sends the last one when it is due (clock driven by the test)."""

from __future__ import annotations

import time

import pytest
import zmq

from workers.engine_thread import PREFIX_REPORT_INTERVAL_S, EngineThread


class CachingEngine:
    """An engine with nothing to run whose prefix cache the test changes by hand."""

    has_work = False

    def __init__(self) -> None:
        self.prefix_report_version = 0

    def cached_prefix_hashes(self) -> list[int]:
        return [self.prefix_report_version]


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_prefix_reports_are_held_back_to_one_per_interval():
    engine, clock = CachingEngine(), Clock()
    thread = EngineThread(engine, zmq.Context.instance(), "inproc://unused", clock=clock)
    assert thread.changed_prefix_hashes() is None and thread.report_wait_s() is None

    engine.prefix_report_version = 1
    assert thread.changed_prefix_hashes() == [1]
    engine.prefix_report_version = 2
    clock.now_s += PREFIX_REPORT_INTERVAL_S / 2
    assert thread.changed_prefix_hashes() is None  # held back
    assert thread.report_wait_s() == pytest.approx(PREFIX_REPORT_INTERVAL_S / 2)
    engine.prefix_report_version = 3
    clock.now_s += PREFIX_REPORT_INTERVAL_S / 2
    assert thread.report_wait_s() == 0.0
    assert thread.changed_prefix_hashes() == [3]  # the latest, once due
    assert thread.changed_prefix_hashes() is None and thread.report_wait_s() is None


def test_an_idle_engine_thread_sends_its_held_back_report():
    context = zmq.Context.instance()
    pipe = context.socket(zmq.PAIR)
    pipe.bind("inproc://engine-thread-test")
    engine = CachingEngine()
    thread = EngineThread(engine, context, "inproc://engine-thread-test")
    thread.next_prefix_report_at_s = time.monotonic() + 1.0  # as if one had just gone out
    engine.prefix_report_version = 1
    thread.start()
    try:
        assert not pipe.poll(50), "sent before it was due"
        assert pipe.poll(10_000), "the held-back report never came"  # no command woke it
        assert pipe.recv_pyobj().prefix_hashes == [1]
    finally:
        thread.stop(timeout_s=5)
        pipe.close(linger=0)
    assert not thread.thread.is_alive()
