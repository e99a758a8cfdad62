"""`llmos status --watch`: the status once a second until Ctrl-C.

On a terminal it is a rich Live display: the tables redrawn in place. Elsewhere (a
pipe, a log file) each frame is the plain `llmos status` text under a `--- HH:MM:SS`
line, so the output stays greppable.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import click

from llmos.cli import StatusSections, status_text

WATCH_INTERVAL_S = 1.0


def watch_status(collect: Callable[[], StatusSections], count: int = 0, console: Any = None) -> None:
    """Show `collect()` every WATCH_INTERVAL_S until Ctrl-C, or `count` frames when above 0;
    `console` (a rich Console) forces the live display, as on a terminal."""
    try:
        if console is not None or sys.stdout.isatty():
            watch_live(collect, count, console)
        else:
            watch_plain(collect, count)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: exit 0, the live display already put away


def frames(count: int) -> Iterable[int]:
    """Frame numbers: `count` of them, or without end."""
    return range(count) if count > 0 else itertools.count()


def watch_plain(collect: Callable[[], StatusSections], count: int) -> None:
    for index in frames(count):
        if index:
            time.sleep(WATCH_INTERVAL_S)
        sections = collect()
        click.echo(f"--- {time.strftime('%H:%M:%S')}\n{status_text(sections)}")


def watch_live(collect: Callable[[], StatusSections], count: int, console: Any) -> None:
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    with Live(console=console, auto_refresh=False, transient=False) as live:
        for index in frames(count):
            if index:
                time.sleep(WATCH_INTERVAL_S)
            live.update(renderable(collect()), refresh=True)


def renderable(sections: StatusSections) -> Any:
    """The status as rich renderables: the broker and kernel lines, then one table each."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    lines, tables = sections
    parts: list[Any] = [Text(f"{time.strftime('%H:%M:%S')}  (Ctrl-C to stop)", style="dim")]
    parts += [Text(line) for line in lines]
    for headers, rows in tables:
        table = Table(*headers, box=None, pad_edge=False, header_style="bold")
        for row in rows:
            table.add_row(*row)
        parts += [Text(""), table]
    return Group(*parts)
