"""Progress for long commands: a rich bar or spinner on a terminal, plain lines elsewhere.

Bars and spinners go to stderr, so stdout keeps only a command's intended output (a
path, a table, a JSON line) and a pipe or a log file gets one plain line per step.
rich is imported only when a terminal shows it: `llmos --help` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

import click

Echo = Callable[[str], None]


def is_terminal() -> bool:
    return sys.stderr.isatty()


class StepProgress:
    """Called like an `echo`: each line starts the next of `total` steps.

    On a terminal the line is printed above a bar that counts the steps; elsewhere it
    goes to `echo` unchanged, as a plain line. Use it as a context manager: leaving
    completes and removes the bar.
    """

    def __init__(self, description: str, total: int, echo: Echo = click.echo, console: Any = None) -> None:
        assert total >= 1
        self.description = description
        self.total = total
        self.echo = echo
        self.num_started = 0
        self._console = console  # a rich Console; tests pass one that records
        self._bar: Any = None
        self._task: Any = None

    @property
    def is_bar(self) -> bool:
        return self._console is not None or is_terminal()

    def __enter__(self) -> StepProgress:
        if self.is_bar:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            console = self._console or Console(stderr=True)
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def __call__(self, line: str) -> None:
        if self._bar is None:
            self.echo(line)
            return
        # the steps done so far are the ones before this line; the bar never runs past its total
        self._bar.update(self._task, completed=min(self.num_started, self.total), description=line)
        self._bar.console.print(line, highlight=False)
        self.num_started += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.total)
            self._bar.stop()
            self._bar = None


class Waiting:
    """What a command still waits for: a spinner on a terminal, else one line per change.

    `done(line)` prints a milestone ("kernel ready") on its own line; `waiting_for(what)`
    replaces the spinner's text, or prints "waiting for <what>" when it changed.
    """

    def __init__(self, echo: Echo = click.echo, console: Any = None) -> None:
        self.echo = echo
        self._console = console
        self._status: Any = None
        self._last_waiting_for = ""

    def __enter__(self) -> Waiting:
        if self._console is not None or is_terminal():
            from rich.console import Console

            console = self._console or Console(stderr=True)
            self._status = console.status("starting ...")
            self._status.start()
        return self

    def done(self, line: str) -> None:
        if self._status is None:
            self.echo(line)
        else:
            self._status.console.print(line, highlight=False)

    def waiting_for(self, what: str) -> None:
        if what == self._last_waiting_for:
            return
        self._last_waiting_for = what
        if self._status is None:
            self.echo(f"waiting for {what}")
        else:
            self._status.update(f"waiting for {what}")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
