"""A process's peak resident memory, as the kernel counts it."""

from __future__ import annotations


def peak_rss_bytes(pid: int | str = "self") -> int:
    """VmHWM from /proc/<pid>/status: the most resident memory the process has had
    (Linux; 0 where there is no such line)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
