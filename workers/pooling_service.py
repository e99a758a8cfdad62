"""A worker that serves an embedding or classification model (`workers.pooling`).

Everything about sockets, liveness and registration is `workers.service.Worker`'s;
this subclass changes only what differs for a pooling model:
- it registers with the broker with its `task` (TASK_KIND_EMBED / _CLASSIFY)
  and with the kernel with no KV capacity;
- a dispatch carries `inputs` instead of a prompt, and starts as soon as a
  slot is free: there are no KV blocks to ask the kernel for, or to free;
- each request ends in one final delta with all its embeddings or labels.
"""

from __future__ import annotations

import logging

from llmos.wire import pb
from workers.dispatch_checks import check_pooling_dispatch
from workers.model_loader import load_tokenizer
from workers.pooling import PoolingEngine, PoolingRequest
from workers.service import Worker
from workers.tasks import TASK_NAMES

log = logging.getLogger(__name__)


class PoolingWorker(Worker):
    def make_engine(self) -> PoolingEngine:  # type: ignore[override]
        return PoolingEngine(
            self.loaded.model,
            load_tokenizer(self.loaded.path),
            self.loaded.task,
            max_length=self.loaded.max_model_len,
            worker_id=self.worker_id,
        )

    def broker_registration(self) -> pb.WorkerRegister:
        registration = super().broker_registration()
        registration.task = self.loaded.task
        return registration

    def accept_dispatch(self, dispatch: pb.Dispatch) -> None:
        request_id = dispatch.request_id
        if not self.is_new_dispatch_for_this_model(dispatch):
            return
        problem = check_pooling_dispatch(dispatch, self.loaded.max_model_len)
        if problem is not None:
            log.warning("worker %s request %s refused: %s", self.worker_id, request_id, problem.error_message)
            self.send_progress([problem])
            return
        # The engine checks kind and inputs (its error comes back at its next step).
        request = PoolingRequest(request_id=request_id, kind=dispatch.kind, inputs=list(dispatch.inputs))
        self.gate.add(request, 0)  # type: ignore[arg-type]  # the gate reads only the id
        log.info(
            "worker %s request %s queued: %s of %d inputs",
            self.worker_id,
            request_id,
            TASK_NAMES.get(dispatch.kind, dispatch.kind),
            len(request.inputs),
        )

    def admit_requests(self) -> None:
        """A free slot is all a request needs: no KV blocks."""
        while (allocation := self.gate.next_allocation()) is not None:
            self.start_request(allocation.request.request_id)

    def release_blocks(self, request_id: str) -> None:
        self.gate.release(request_id)  # it held no blocks: nothing to tell the kernel
