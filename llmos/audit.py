"""A tamper-evident, append-only audit log: one JSON line per event, hash-chained.

Each line is a JSON object `{"seq": N, "ts": unix time, "kind": ..., <fields>,
"prev": <SHA-256 hex of the previous line>}` (64 zeros before the first line).
Editing, removing or reordering any line breaks the chain at the next line, or
the sequence; a truncated last line has no newline. Removing lines at the end
leaves a shorter valid chain, so each append also rewrites a small head file
(`<log>.head`: the last line's seq and hash), which `verify` checks: keep it, or
a copy shipped elsewhere, apart from the log for the strongest protection.

The broker's kinds: start, admission, refusal, cancel, completion, auth_failure,
key_change, admin_action. Lines never carry prompt or answer text; `keyed_hash`
gives a fingerprint of a text that only the holder of the key can check.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIRST_PREV = "0" * 64
FSYNC_POLICIES = ("every", "interval")
RESERVED_FIELDS = frozenset({"seq", "ts", "kind", "prev"})
_KIND = re.compile(r"^[a-z_]+$")
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)  # one, not one per line


class AuditError(Exception):
    """The log cannot be continued (its last line is damaged); run `llmos audit verify`."""


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def keyed_hash(key: bytes, text: str) -> str:
    """HMAC-SHA256 of the text, first 16 hex characters."""
    return hmac.digest(key, text.encode("utf-8", "surrogatepass"), "sha256").hex()[:16]


def load_or_create_hash_key(path: Path) -> bytes:
    """32 random bytes kept in `path` (mode 0o600), made on first use."""
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    return key


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


class AuditLog:
    """Appends lines to the log. `is_buffered`: lines reach the file at `flush` (or a
    sync), not at each append; a service that flushes before it answers what it
    logged keeps the log ahead of its answers at one write per batch."""

    def __init__(
        self, path: Path, fsync: str = "every", fsync_interval_s: float = 1.0, is_buffered: bool = False
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"audit fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        self.path = path
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.is_buffered = is_buffered
        self._lock = threading.Lock()
        self._seq, self._prev = self._last_of(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab")
        try:  # two writers would fork the chain
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise AuditError(f"{path} is in use by another process (another broker?)") from None
        self._synced_at_s = time.monotonic()
        self._is_dirty = False

    @staticmethod
    def _last_of(path: Path) -> tuple[int, str]:
        """(seq, hash) of the log's last line, to continue the chain; (0, zeros) if empty."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0, FIRST_PREV
        if not data:
            return 0, FIRST_PREV
        lines = data.split(b"\n")
        if lines[-1] != b"":
            raise AuditError(f"{path}: line {len(lines)} is truncated; run `llmos audit verify {path}`")
        last = lines[-2]
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError):
            raise AuditError(
                f"{path}: line {len(lines) - 1} is not an audit record; run `llmos audit verify {path}`"
            ) from None
        return seq, line_hash(last)

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        if not _KIND.match(kind):
            raise ValueError(f"audit kind {kind!r} must be lower-case letters and _")
        clash = RESERVED_FIELDS & fields.keys()
        if clash:
            raise ValueError(f"fields {sorted(clash)} are the log's own")
        with self._lock:
            record = {"seq": self._seq + 1, "ts": round(time.time(), 6), "kind": kind, **fields}
            record["prev"] = self._prev
            line = _ENCODER.encode(record).encode()
            self._file.write(line + b"\n")
            if not self.is_buffered:
                self._file.flush()
            self._seq, self._prev = record["seq"], line_hash(line)
            self._is_dirty = True
            # the head file goes with each fsync: with "interval", lines removed from the
            # end within the last interval are not caught, as lines not yet synced may be lost
            if self.fsync == "every" or time.monotonic() - self._synced_at_s >= self.fsync_interval_s:
                self._sync()
            return record

    def flush(self) -> None:
        """Hand the buffered lines to the file (no fsync; that follows the fsync policy)."""
        with self._lock:
            if not self._file.closed:
                self._file.flush()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._write_head()
        self._synced_at_s = time.monotonic()
        self._is_dirty = False

    def _write_head(self) -> None:
        head = head_path(self.path)
        tmp = head.with_name(head.name + ".tmp")
        with open(tmp, "w") as out:
            json.dump({"seq": self._seq, "hash": self._prev}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, head)

    def close(self) -> None:
        with self._lock:
            if self._file.closed:
                return
            if self._is_dirty:
                self._sync()
            self._file.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class VerifyResult:
    is_ok: bool
    num_lines: int
    bad_line: int | None = None  # 1-based
    reason: str = ""


def verify(path: Path) -> VerifyResult:
    """Check the chain, the sequence, the final newline and (if present) the head file."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    is_truncated = lines[-1] != b""
    if not is_truncated:
        lines.pop()
    prev, seq = FIRST_PREV, 0
    for number, line in enumerate(lines, start=1):
        if is_truncated and number == len(lines):
            return VerifyResult(False, len(lines), number, "truncated: the last line has no newline")
        try:
            record = json.loads(line)
            record_seq, record_prev = int(record["seq"]), str(record["prev"])
            str(record["kind"]), float(record["ts"])
        except (ValueError, KeyError, TypeError):
            return VerifyResult(False, len(lines), number, "not an audit record (edited or damaged)")
        if record_prev != prev:
            if number > 1:  # the line before changed, or a line is missing or out of order here
                if record_seq == seq + 1:
                    return VerifyResult(
                        False,
                        len(lines),
                        number - 1,
                        f"edited: line {number} holds another hash of it (or line {number} was forged)",
                    )
                return VerifyResult(
                    False, len(lines), number, f"sequence {record_seq} after {seq}: lines removed or moved"
                )
            return VerifyResult(False, len(lines), number, "the first line does not start the chain")
        if record_seq != seq + 1:
            return VerifyResult(False, len(lines), number, f"sequence {record_seq} after {seq}")
        prev, seq = line_hash(line), record_seq
    return _check_head(path, len(lines), seq, prev)


def _check_head(path: Path, num_lines: int, seq: int, last_hash: str) -> VerifyResult:
    try:
        head = json.loads(head_path(path).read_text())
        head_seq, head_hash = int(head["seq"]), str(head["hash"])
    except FileNotFoundError:
        return VerifyResult(True, num_lines)
    except (ValueError, KeyError, TypeError):
        return VerifyResult(False, num_lines, None, f"the head file {head_path(path)} is damaged")
    if head_seq > seq:
        return VerifyResult(
            False,
            num_lines,
            num_lines + 1,
            f"lines removed at the end (the head file records seq {head_seq})",
        )
    if head_seq == seq and head_hash != last_hash:
        return VerifyResult(
            False, num_lines, num_lines, "the last line differs from the one the head file records"
        )
    return VerifyResult(True, num_lines)


def tail(path: Path, num_lines: int) -> list[dict[str, Any]]:
    lines = path.read_bytes().splitlines()[-num_lines:] if num_lines > 0 else []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"kind": "damaged", "line": line[:200].decode("ascii", "replace")})
    return records
