"""Progress: plain lines where stderr is not a terminal, a rich bar or spinner where it is."""

from __future__ import annotations

import io

from rich.console import Console

from llmos.progress import StepProgress, Waiting


def terminal() -> Console:
    """A console that renders as on a terminal, into a string."""
    return Console(file=io.StringIO(), force_terminal=True, width=100)


def test_off_a_terminal_each_step_is_a_plain_line():
    lines: list[str] = []
    with StepProgress("making", total=2, echo=lines.append) as step:
        step("training the tokenizer")
        step("saving the model")

    assert lines == ["training the tokenizer", "saving the model"]


def test_on_a_terminal_the_steps_print_above_a_bar_and_echo_gets_nothing():
    lines: list[str] = []
    console = terminal()
    with StepProgress("making", total=2, echo=lines.append, console=console) as step:
        step("training the tokenizer")
        step("saving the model")

    assert lines == []
    shown = console.file.getvalue()
    assert "training the tokenizer" in shown and "saving the model" in shown
    assert "2/2" in shown or "1/2" in shown  # the bar's count, while it was drawn


def test_more_steps_than_expected_never_run_the_bar_past_its_total():
    console = terminal()
    with StepProgress("bench", total=1, console=console) as step:
        for index in range(3):
            step(f"step {index}")

    assert "3/1" not in console.file.getvalue()


def test_waiting_prints_milestones_and_each_new_wait_once_off_a_terminal():
    lines: list[str] = []
    with Waiting(echo=lines.append) as waiting:
        waiting.waiting_for("the kernel")
        waiting.waiting_for("the kernel")
        waiting.done("kernel ready")
        waiting.waiting_for("worker-0: loading its model")

    assert lines == ["waiting for the kernel", "kernel ready", "waiting for worker-0: loading its model"]


def test_waiting_on_a_terminal_prints_milestones_beside_a_spinner():
    lines: list[str] = []
    console = terminal()
    with Waiting(echo=lines.append, console=console) as waiting:
        waiting.waiting_for("the kernel")
        waiting.done("kernel ready")

    assert lines == []
    assert "kernel ready" in console.file.getvalue()
