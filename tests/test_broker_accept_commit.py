"""An `Accepted` goes out only once the journal holds its request: the batch's one commit
comes before its replies, and a commit that fails turns the batch's acceptances into
UNAVAILABLE refusals (driven on a real inproc socket pair, without a broker process)."""

from collections.abc import Iterator

import pytest
import zmq

from broker.audit_trail import AuditTrail
from broker.client_replies import ClientReplies
from broker.journal import Journal, JournalError
from broker.request_journal import RequestJournal
from broker.request_table import RequestTable
from llmos.wire import pack, pb
from tests.test_broker_requests import make_admitted, make_table


class FailingCommits(Journal):
    """A journal whose disk fills up: every write lands, no commit does."""

    def commit(self) -> None:
        self._chunk_rows.clear()
        self.db.rollback()
        raise JournalError("database or disk is full")


@pytest.fixture
def client_pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    context = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"client-1")
    router.bind("inproc://clients")
    dealer.connect("inproc://clients")
    dealer.send(b"hello")  # the router learns the client's identity
    assert router.recv_multipart() == [b"client-1", b"hello"]
    try:
        yield router, dealer
    finally:
        router.close(0)
        dealer.close(0)
        context.term()


def accept_batch(journal: Journal, router: zmq.Socket, table: RequestTable) -> RequestJournal:
    request_journal = RequestJournal(journal, result_ttl_s=60.0)
    replies = ClientReplies(router, table, request_journal, AuditTrail(None))
    with replies.batch():
        for request_id in ("a", "b"):
            admitted = make_admitted(request_id=request_id)
            request_journal.record_accepted(admitted)
            request, position = table.add(b"client-1", False, admitted, now_s=0.0)
            request_journal.track_accepted(request)
            replies.accept(request, pack(pb.Accepted(request_id=request_id, queue_position=position)))
    return request_journal


def received(dealer: zmq.Socket, count: int) -> list:
    envelopes = [pb.Envelope.FromString(dealer.recv()) for _ in range(count)]
    return [getattr(envelope, envelope.WhichOneof("body")) for envelope in envelopes]


def test_a_batch_is_accepted_once_its_commit_holds_it(client_pair):
    router, dealer = client_pair
    journal, table = Journal(":memory:"), make_table()
    request_journal = accept_batch(journal, router, table)

    replies = received(dealer, 2)
    assert [(type(m), m.request_id) for m in replies] == [(pb.Accepted, "a"), (pb.Accepted, "b")]
    assert [row.key for row in journal.live()] == [("alice", "a"), ("alice", "b")]
    assert request_journal.num_live == 2 and len(table.queue) == 2


def test_a_failed_commit_refuses_the_batch_and_forgets_it(client_pair):
    router, dealer = client_pair
    table = make_table()
    request_journal = accept_batch(FailingCommits(":memory:"), router, table)

    replies = received(dealer, 2)
    assert [(type(m), m.code, m.request_id) for m in replies] == [
        (pb.Error, pb.UNAVAILABLE, "a"),
        (pb.Error, pb.UNAVAILABLE, "b"),
    ]
    assert "could not journal" in replies[0].message and replies[0].retry_after_ms > 0
    assert request_journal.num_live == 0 and len(table.queue) == 0
