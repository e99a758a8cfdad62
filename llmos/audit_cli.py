"""`llmos audit verify FILE`, `llmos audit tail FILE`: check and read the broker's audit log."""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from llmos.audit import tail as tail_records
from llmos.audit import verify as verify_log

FOLLOW_INTERVAL_S = 0.5
EXIT_BAD_LOG = 1
EXIT_NO_LOG = 2


@click.group("audit")
def audit() -> None:
    """Verify or show the broker's tamper-evident audit log (llmos broker --audit-log)."""


@audit.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def verify(file: Path) -> None:
    """Exit 0 if the hash chain is intact; else name the first bad line and exit 1."""
    if not file.is_file():
        click.echo(f"no audit log at {file}", err=True)
        sys.exit(EXIT_NO_LOG)
    result = verify_log(file)
    if result.is_ok:
        click.echo(f"ok: {result.num_lines} lines, chain intact")
        return
    where = f"bad line {result.bad_line}" if result.bad_line is not None else "bad log"
    click.echo(f"{where}: {result.reason}", err=True)
    sys.exit(EXIT_BAD_LOG)


def describe(record: dict[str, Any]) -> str:
    when = record.get("ts")
    stamp = (
        datetime.datetime.fromtimestamp(when).isoformat(sep=" ", timespec="seconds")
        if isinstance(when, (int, float))
        else "?"
    )
    rest = " ".join(
        f"{name}={json.dumps(value) if not isinstance(value, str) else value}"
        for name, value in record.items()
        if name not in ("seq", "ts", "kind", "prev")
    )
    return f"#{record.get('seq', '?'):<6} {stamp}  {record.get('kind', '?'):<13} {rest}"


@audit.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-n", "num_lines", default=20, show_default=True, help="lines to show")
@click.option("--follow", is_flag=True, help="keep printing lines as they are appended (Ctrl-C stops)")
def tail(file: Path, num_lines: int, follow: bool) -> None:
    """Show the last lines, one event a line."""
    if not file.is_file():
        click.echo(f"no audit log at {file}", err=True)
        sys.exit(EXIT_NO_LOG)
    for record in tail_records(file, num_lines):
        click.echo(describe(record))
    if not follow:
        return
    offset = file.stat().st_size
    try:
        while True:
            time.sleep(FOLLOW_INTERVAL_S)
            with open(file, "rb") as log_file:
                log_file.seek(offset)
                data = log_file.read()
            complete = data[: data.rfind(b"\n") + 1]
            offset += len(complete)
            for line in complete.splitlines():
                click.echo(describe(json.loads(line)))
    except KeyboardInterrupt:
        pass
