"""How a benchmark's report prints its targets, each met (True), missed (False) or not
measured by the run (None)."""

from __future__ import annotations

TARGET_LABELS = {True: "met", False: "MISSED", None: "not measured"}


def target_lines(title: str, targets: dict[str, bool | None]) -> list[str]:
    """`title:` then a line per target; nothing where there are none (an older JSON line)."""
    if not targets:
        return []
    return [f"{title}:", *(f"  {name}: {TARGET_LABELS[value]}" for name, value in targets.items())]
