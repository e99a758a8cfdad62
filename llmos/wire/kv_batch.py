"""KV allocations and frees bound for the kernel, sent together (`KvBatch`).

A worker makes its allocations and frees one request at a time, and the kernel pays
for each message it receives and answers (its frames, its envelope, its reply) about
as much as for the change itself. So a worker's loop queues them and sends each turn's
together: one alone goes as itself (a KvAllocate or KvFree), several as one KvBatch of
at most MAX_KV_BATCH_CHANGES, which the kernel answers with a KvBatchReply in the same
order (docs/protocol.md, "Kernel").
"""

from __future__ import annotations

from llmos.wire import llmos_pb2 as pb

MAX_KV_BATCH_CHANGES = 1024  # the kernel's bound (kernel_svc.limits)


class KvOutbox:
    """Allocations and frees in the order they were made, until `take`."""

    def __init__(self) -> None:
        self.changes: list[pb.KvAllocate | pb.KvFree] = []

    def __len__(self) -> int:
        return len(self.changes)

    def add(self, change: pb.KvAllocate | pb.KvFree) -> None:
        self.changes.append(change)

    def take(self) -> list[pb.KvAllocate | pb.KvFree | pb.KvBatch]:
        """The messages that carry every change queued (none when none), emptied."""
        changes, self.changes = self.changes, []
        return [
            batch_of(changes[i : i + MAX_KV_BATCH_CHANGES])
            for i in range(0, len(changes), MAX_KV_BATCH_CHANGES)
        ]


def batch_answers(reply: pb.KvBatchReply) -> list[pb.KernelReply | pb.Error]:
    """Each change's answer, in order: what the kernel would have sent for it alone."""
    return [result.error if result.HasField("error") else result.reply for result in reply.results]


def batch_of(changes: list[pb.KvAllocate | pb.KvFree]) -> pb.KvBatch | pb.KvAllocate | pb.KvFree:
    """One message for these changes: the change itself where it is alone."""
    if len(changes) == 1:
        return changes[0]
    batch = pb.KvBatch()
    for change in changes:
        entry = batch.changes.add()
        if isinstance(change, pb.KvAllocate):
            entry.allocate.CopyFrom(change)
        else:
            entry.free.CopyFrom(change)
    return batch
