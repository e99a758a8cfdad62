"""The audit log: a hash chain that `llmos audit verify` checks, and every kind of
tampering it names the first bad line of."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llmos.audit import AuditError, AuditLog, keyed_hash, load_or_create_hash_key, verify

NUM_LINES = 20


def write_log(path: Path, num_lines: int = NUM_LINES, fsync: str = "every") -> None:
    with AuditLog(path, fsync=fsync) as log:
        for index in range(num_lines):
            log.append("admission", request_id=f"r{index}", tenant="alice", prompt_chars=index)


def verify_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmos", "audit", "verify", str(path)], capture_output=True, text=True
    )


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write_log(path)
    return path


def test_an_untouched_log_verifies(log_path: Path) -> None:
    result = verify_cli(log_path)
    assert (result.returncode, result.stdout.strip()) == (0, f"ok: {NUM_LINES} lines, chain intact")
    records = [json.loads(line) for line in lines_of(log_path)]
    assert [r["seq"] for r in records] == list(range(1, NUM_LINES + 1))
    assert records[0]["prev"] == "0" * 64


def test_reopening_continues_the_chain(log_path: Path) -> None:
    write_log(log_path, num_lines=3)
    assert verify(log_path).is_ok and verify(log_path).num_lines == NUM_LINES + 3
    assert json.loads(lines_of(log_path)[-1])["seq"] == NUM_LINES + 3


def test_appends_from_threads_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync="interval") as log:
        threads = [
            threading.Thread(target=lambda: [log.append("completion", n=i) for i in range(200)])
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    result = verify(path)
    assert (result.is_ok, result.num_lines) == (True, 800)


def tamper(path: Path, how: str) -> None:
    lines = lines_of(path)
    if how == "edit line 5":
        lines[4] = lines[4].replace('"tenant":"alice"', '"tenant":"mallory"')
    elif how == "delete line 7":
        del lines[6]
    elif how == "swap lines 3 and 4":
        lines[2], lines[3] = lines[3], lines[2]
    elif how == "truncate the last line":
        lines[-1] = lines[-1][:20]
    elif how == "remove the last 2 lines":
        del lines[-2:]
    elif how == "append a forged line":
        lines.append(
            json.dumps({"seq": NUM_LINES + 1, "ts": 1.0, "kind": "admission", "prev": "f" * 64}) + "\n"
        )
    path.write_text("".join(lines))


@pytest.mark.parametrize(
    ("how", "bad_line"),
    [
        ("edit line 5", 5),
        ("delete line 7", 7),
        ("swap lines 3 and 4", 3),
        ("truncate the last line", NUM_LINES),
        ("remove the last 2 lines", NUM_LINES - 1),
        ("append a forged line", NUM_LINES),
    ],
)
def test_tampering_is_caught_at_its_first_bad_line(log_path: Path, how: str, bad_line: int) -> None:
    tamper(log_path, how)
    result = verify_cli(log_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"bad line {bad_line}:"), result.stderr


def test_a_log_with_a_damaged_last_line_is_not_continued(log_path: Path) -> None:
    tamper(log_path, "truncate the last line")
    with pytest.raises(AuditError, match="truncated"):
        AuditLog(log_path)


def test_a_missing_log_is_its_own_exit_status(tmp_path: Path) -> None:
    assert verify_cli(tmp_path / "nothing.jsonl").returncode == 2


def test_tail_shows_the_last_events(log_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmos", "audit", "tail", "-n", "2", str(log_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == [f"#{NUM_LINES - 1}", f"#{NUM_LINES}"]
    assert "request_id=r19" in result.stdout and "prev" not in result.stdout


def test_keyed_hashes_need_the_key(tmp_path: Path) -> None:
    key = load_or_create_hash_key(tmp_path / "hashkey")
    assert (tmp_path / "hashkey").stat().st_mode & 0o777 == 0o600
    assert load_or_create_hash_key(tmp_path / "hashkey") == key
    assert keyed_hash(key, "my prompt") == keyed_hash(key, "my prompt") != keyed_hash(key, "my prompt!")
    assert keyed_hash(key, "my prompt") != keyed_hash(b"\x00" * 32, "my prompt")


def test_a_second_writer_is_refused(log_path: Path) -> None:
    with AuditLog(log_path), pytest.raises(AuditError, match="in use"):
        AuditLog(log_path)
