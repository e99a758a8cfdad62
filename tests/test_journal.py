"""The broker's journal store (broker.journal) on its own: what it keeps, across a reopen."""

from __future__ import annotations

import pytest

from broker.journal import Chunk, Journal, JournalError, catch_up
from llmos.wire import pb

KEY = ("alice", "req-1")


def chunk(index: int, token_ids: list[int], text: str) -> pb.TokenChunk:
    return pb.TokenChunk(request_id=KEY[1], index=index, token_ids=token_ids, text=text)


def journal_with_progress(path: str) -> Journal:
    journal = Journal(path)
    journal.add(KEY, pb.TASK_KIND_GENERATE, b"the request", "batch", now=100.0)
    journal.add_chunk(KEY, chunk(0, [5, 6], "ab"))
    journal.add_chunk(KEY, chunk(2, [7], "c"))
    journal.commit()
    return journal


def test_a_reopened_journal_has_the_live_request_and_its_chunks(tmp_path):
    path = str(tmp_path / "journal.sqlite3")
    journal_with_progress(path).close()

    journal = Journal(path)
    [row] = journal.live()
    assert (row.key, row.kind, row.message, row.tier, row.accepted_at) == (
        KEY,
        pb.TASK_KIND_GENERATE,
        b"the request",
        "batch",
        100.0,
    )
    assert row.chunks == [Chunk(0, [5, 6], "ab"), Chunk(2, [7], "c")]
    assert journal.finished(KEY) is None


def test_uncommitted_chunks_are_not_in_the_journal(tmp_path):
    path = str(tmp_path / "journal.sqlite3")
    journal = journal_with_progress(path)
    journal.add_chunk(KEY, chunk(3, [8], "d"))
    journal.close()  # no commit: as a kill before the step's commit

    assert [c.index for c in Journal(path).live()[0].chunks] == [0, 2]


def test_an_accepted_request_is_durable_only_once_committed(tmp_path):
    path = str(tmp_path / "journal.sqlite3")
    journal = journal_with_progress(path)
    journal.add(("bob", "req-2"), pb.TASK_KIND_GENERATE, b"later", "batch", now=101.0)
    journal.close()  # no commit: as a kill before the batch's commit, so before its Accepted went out

    assert [row.key for row in Journal(path).live()] == [KEY]


def test_a_finished_request_keeps_its_answer_until_purged(tmp_path):
    journal = journal_with_progress(str(tmp_path / "journal.sqlite3"))
    journal.finish(KEY, b"the answer", now=200.0)
    journal.commit()

    assert journal.live() == []
    finished = journal.finished(KEY)
    assert finished is not None
    assert (finished.tier, finished.answer, len(finished.chunks)) == ("batch", b"the answer", 2)
    assert journal.purge_finished(finished_before=200.0) == 0
    assert journal.purge_finished(finished_before=200.5) == 1
    assert journal.finished(KEY) is None and journal.chunks(KEY) == []


def test_a_new_request_over_a_finished_key_replaces_it(tmp_path):
    journal = journal_with_progress(str(tmp_path / "journal.sqlite3"))
    journal.finish(KEY, b"the answer", now=200.0)
    journal.add(KEY, pb.TASK_KIND_GENERATE, b"again", "standard", now=300.0)

    [row] = journal.live()
    assert (row.message, row.chunks) == (b"again", [])


def test_a_second_broker_cannot_open_a_journal_in_use(tmp_path):
    path = str(tmp_path / "journal.sqlite3")
    journal = Journal(path)
    with pytest.raises(JournalError, match="another broker"):
        Journal(path)
    journal.close()
    Journal(path).close()  # free again once the first one closed


def test_catch_up_is_every_token_from_the_index_the_client_holds():
    chunks = [Chunk(0, [5, 6], "ab"), Chunk(2, [7], "c"), Chunk(3, [8, 9], "de")]
    assert catch_up(chunks, 0) == ([5, 6, 7, 8, 9], "abcde")
    assert catch_up(chunks, 2) == ([7, 8, 9], "cde")
    assert catch_up(chunks, 5) == ([], "")


def test_an_in_memory_journal_works_and_keeps_nothing():
    journal = Journal(":memory:")
    journal.add(KEY, pb.TASK_KIND_GENERATE, b"the request", "batch", now=1.0)
    assert [row.key for row in journal.live()] == [KEY]
    journal.close()
    assert Journal(":memory:").live() == []
