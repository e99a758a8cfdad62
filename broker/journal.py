"""The broker's durable journal: accepted requests, the tokens relayed, the answers sent.

An embedded SQLite database in WAL mode. One row per accepted request, keyed by
(tenant, the client's request id), holds the request as admitted, its tier and
status (live or finished), and once sent its final answer; relayed chunks go to
an insert-only table, so progress is an insert, not a rewrite of the request.

`synchronous=NORMAL` (the default) survives the broker being killed: a commit is
in the WAL file before it returns. A power loss may lose the last transactions;
`synchronous=FULL` (`--journal-sync full`) syncs the WAL on every commit.

The database is opened in exclusive locking mode: one broker owns a journal, and a
second broker pointed at the same file fails to start instead of replaying
requests the first one is running.

Writes are grouped by the caller: every write joins the open transaction until
`commit`, which the broker calls once per batch of messages, before it sends
what the batch answers (an `Accepted`, a relayed chunk, a final answer).
"""

from __future__ import annotations

import sqlite3
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from llmos.wire import pb

JournalKey = tuple[str, str]  # (tenant, the client's request id)
IN_MEMORY = ":memory:"
SYNC_MODES = ("normal", "full")
LOCK_TIMEOUT_S = 2.0  # a second broker on the same journal gives up this soon

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    tenant TEXT NOT NULL,
    request_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    message BLOB NOT NULL,
    tier TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    is_finished INTEGER NOT NULL DEFAULT 0,
    answer BLOB,
    finished_at REAL,
    PRIMARY KEY (tenant, request_id)
);
CREATE TABLE IF NOT EXISTS chunks (
    seq INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    request_id TEXT NOT NULL,
    token_index INTEGER NOT NULL,
    token_ids BLOB NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_request ON chunks (tenant, request_id);
CREATE INDEX IF NOT EXISTS finished_by_time ON requests (is_finished, finished_at);
"""


class JournalError(Exception):
    """The journal cannot be opened or written (locked by another broker, disk full, I/O)."""


@dataclass
class Chunk:
    index: int  # tokens generated before it
    token_ids: list[int]
    text: str


@dataclass
class JournalledRequest:
    """A live row, with the chunks relayed so far, as a restarted broker loads it."""

    key: JournalKey
    kind: int
    message: bytes
    tier: str
    accepted_at: float  # wall-clock seconds (time.time()): it outlives the process
    chunks: list[Chunk] = field(default_factory=list)


@dataclass
class FinishedRequest:
    tier: str
    answer: bytes
    chunks: list[Chunk]


def _pack_ids(token_ids: list[int]) -> bytes:
    return array("i", token_ids).tobytes()


def _unpack_ids(data: bytes) -> list[int]:
    ids = array("i")
    ids.frombytes(data)
    return ids.tolist()


class Journal:
    def __init__(self, path: str, sync: str = "normal") -> None:
        if sync not in SYNC_MODES:
            raise JournalError(f"journal sync must be one of {', '.join(SYNC_MODES)}, not '{sync}'")
        self.path = path
        self._chunk_rows: list[tuple[str, str, int, bytes, str]] = []  # not yet inserted
        if path != IN_MEMORY:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=LOCK_TIMEOUT_S, isolation_level="DEFERRED")
            self.db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={sync.upper()}")
            self.db.executescript(_SCHEMA)
            self.db.execute("BEGIN IMMEDIATE")  # takes the exclusive lock, held from now on
            self.db.commit()
        except sqlite3.Error as exc:
            raise JournalError(
                f"cannot open the journal {path}: {exc} (is another broker using it?)"
            ) from exc

    def close(self) -> None:
        self.db.close()

    # --- writes

    def add(self, key: JournalKey, kind: int, message: bytes, tier: str, now: float) -> None:
        """Record an accepted request (durable at the next `commit`); a finished row of the
        same key (a new request reusing the id of one whose answer is kept) is replaced."""
        try:
            self._delete(key)
            self.db.execute(
                "INSERT INTO requests (tenant, request_id, kind, message, tier, accepted_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (*key, kind, message, tier, now),
            )
        except sqlite3.Error as exc:
            raise JournalError(str(exc)) from exc

    def add_chunk(self, key: JournalKey, chunk: pb.TokenChunk) -> None:
        """Durable at the next `commit`, which inserts the chunks of its batch in one call."""
        self._chunk_rows.append((*key, chunk.index, _pack_ids(list(chunk.token_ids)), chunk.text))

    def _insert_chunks(self) -> None:
        """Write the buffered chunk rows (before a commit, and before a read or delete
        that must see them)."""
        if not self._chunk_rows:
            return
        rows, self._chunk_rows = self._chunk_rows, []
        try:
            self.db.executemany(
                "INSERT INTO chunks (tenant, request_id, token_index, token_ids, text)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        except sqlite3.Error as exc:
            raise JournalError(str(exc)) from exc

    def finish(self, key: JournalKey, answer: bytes, now: float) -> None:
        self._write(
            "UPDATE requests SET is_finished = 1, answer = ?, finished_at = ?"
            " WHERE tenant = ? AND request_id = ?",
            (answer, now, *key),
        )

    def _write(self, sql: str, parameters: tuple) -> None:
        try:
            self.db.execute(sql, parameters)
        except sqlite3.Error as exc:
            raise JournalError(str(exc)) from exc

    def commit(self) -> None:
        """Make the writes since the last commit durable."""
        self._insert_chunks()
        if not self.db.in_transaction:
            return
        try:
            self.db.commit()
        except sqlite3.Error as exc:
            self.db.rollback()
            raise JournalError(str(exc)) from exc

    def purge_finished(self, finished_before: float) -> int:
        """Delete finished requests (and their chunks) finished before that time; how many."""
        try:
            keys = self.db.execute(
                "SELECT tenant, request_id FROM requests WHERE is_finished = 1 AND finished_at < ?",
                (finished_before,),
            ).fetchall()
            for key in keys:
                self._delete(key)
        except sqlite3.Error as exc:
            raise JournalError(str(exc)) from exc
        self.commit()
        return len(keys)

    def _delete(self, key: JournalKey) -> None:
        """Delete a request's row and chunks; a key with no row (a new request's) costs one
        statement. Chunks are only written for a request with a row."""
        if self.db.execute("DELETE FROM requests WHERE tenant = ? AND request_id = ?", key).rowcount:
            self._insert_chunks()
            self.db.execute("DELETE FROM chunks WHERE tenant = ? AND request_id = ?", key)

    # --- reads

    def live(self) -> list[JournalledRequest]:
        """Every unfinished request, in the order they were accepted."""
        rows = self.db.execute(
            "SELECT tenant, request_id, kind, message, tier, accepted_at FROM requests"
            " WHERE is_finished = 0 ORDER BY accepted_at, rowid"
        ).fetchall()
        return [
            JournalledRequest(
                (tenant, request_id), kind, message, tier, accepted_at, self.chunks((tenant, request_id))
            )
            for tenant, request_id, kind, message, tier, accepted_at in rows
        ]

    def finished(self, key: JournalKey) -> FinishedRequest | None:
        """A finished request whose answer is kept, or None."""
        row = self.db.execute(
            "SELECT tier, answer FROM requests WHERE tenant = ? AND request_id = ? AND is_finished = 1", key
        ).fetchone()
        return None if row is None else FinishedRequest(row[0], row[1], self.chunks(key))

    def chunks(self, key: JournalKey) -> list[Chunk]:
        self._insert_chunks()
        rows = self.db.execute(
            "SELECT token_index, token_ids, text FROM chunks"
            " WHERE tenant = ? AND request_id = ? ORDER BY seq",
            key,
        ).fetchall()
        return [Chunk(index, _unpack_ids(ids), text) for index, ids, text in rows]


def catch_up(chunks: list[Chunk], from_index: int) -> tuple[list[int], str]:
    """The token ids from `from_index` on and the text of the chunks that begin there
    or later: what a client holding `from_index` tokens has not seen. A client
    holds whole chunks, so `from_index` is a chunk boundary."""
    token_ids = [token for chunk in chunks for token in chunk.token_ids][from_index:]
    text = "".join(chunk.text for chunk in chunks if chunk.index >= from_index)
    return token_ids, text
