"""The broker's pool of connected workers and their slots (plain data, no sockets).

Verbs as in the zguide's mdbroker: require_worker, refresh, delete_worker,
purge_expired. A worker is dead after HEARTBEAT_LIVENESS silent intervals. The
models the workers serve are kept here too, with the grace after a model's last
worker left (`broker.model_catalog`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from broker.admission import ModelView
from broker.model_catalog import ModelCatalog, ModelKey
from broker.rates import RateMeter
from llmos.wire import pb
from llmos.wire.constants import HEARTBEAT_LIVENESS

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

SPEED_WEIGHT = 0.2  # of the newest request in a worker's average speed


@dataclass
class ConnectedWorker:
    worker_id: str
    identity: bytes
    models: frozenset[str]
    task: pb.TaskKind
    device: str
    max_num_seqs: int
    heartbeat_interval_s: float
    expiry_s: float
    max_model_len: int = 0  # tokens of context it registered; 0 = unknown
    running_ids: set[str] = field(default_factory=set)
    # running requests told to preempt, or making their last token: their slots are as
    # good as free, because each leaves at the end of the step in flight
    leaving_ids: set[str] = field(default_factory=set)
    tokens: RateMeter = field(default_factory=RateMeter)
    # tokens a second one request gets here: an average over the requests it finished
    # (0: none yet); placement weighs it, so a fast worker takes more of a mixed pool's work
    request_tokens_per_s: float = 0.0
    # finishing what it runs, then leaving: no new request goes to it (see docs/protocol.md)
    is_draining: bool = False
    sent_at_s: float = 0.0  # the broker's last message to it: a heartbeat is due only once it is quiet

    @property
    def num_busy(self) -> int:
        return len(self.running_ids) - len(self.leaving_ids)

    @property
    def has_capacity(self) -> bool:
        return not self.is_draining and self.num_busy < self.max_num_seqs

    def note_request_speed(self, num_tokens: int, decode_s: float) -> None:
        """A request it ran from first token to last made `num_tokens` after the first in `decode_s`."""
        if num_tokens <= 0 or decode_s <= 0:
            return
        speed = num_tokens / decode_s
        if self.request_tokens_per_s == 0:
            self.request_tokens_per_s = speed
        else:
            self.request_tokens_per_s += SPEED_WEIGHT * (speed - self.request_tokens_per_s)

    def take_slot(self, request_id: str) -> None:
        assert self.has_capacity, f"worker {self.worker_id} has no free slot"
        self.running_ids.add(request_id)

    def mark_leaving(self, request_id: str) -> None:
        """The request leaves at the end of the step in flight: count its slot as free."""
        assert request_id in self.running_ids, f"{request_id} is not on worker {self.worker_id}"
        self.leaving_ids.add(request_id)

    def release_slot(self, request_id: str) -> None:
        self.running_ids.discard(request_id)
        self.leaving_ids.discard(request_id)

    def serves(self, model: str) -> bool:
        return model in self.models

    @property
    def model_keys(self) -> list[ModelKey]:
        return [(self.task, model) for model in self.models]

    def status(self, now_s: float) -> pb.WorkerStatus:
        return pb.WorkerStatus(
            worker_id=self.worker_id,
            models=sorted(self.models),
            num_running=len(self.running_ids),
            max_num_seqs=self.max_num_seqs,
            device=self.device,
            tokens_per_s=self.tokens.per_s(now_s),
            task=self.task,
            is_draining=self.is_draining,
        )

    def add_slots(self, into: RepeatedCompositeFieldContainer[pb.WorkerSlots]) -> None:
        """Add its slots to a ScheduleRequest's workers, built in place."""
        into.add(
            worker_id=self.worker_id,
            models=sorted(self.models),
            num_running=self.num_busy,
            max_num_seqs=self.max_num_seqs,
            tokens_per_s=self.request_tokens_per_s,
        )


class WorkerPool:
    def __init__(self, default_heartbeat_interval_s: float, model_grace_s: float = 30.0) -> None:
        self.default_heartbeat_interval_s = default_heartbeat_interval_s
        self._workers: dict[bytes, ConnectedWorker] = {}
        self.catalog = ModelCatalog(model_grace_s)
        self._model_view: ModelView | None = None  # model_view(), until the pool changes

    def __iter__(self):
        return iter(list(self._workers.values()))

    def __len__(self) -> int:
        return len(self._workers)

    def get(self, identity: bytes) -> ConnectedWorker | None:
        return self._workers.get(identity)

    def by_id(self, worker_id: str) -> ConnectedWorker | None:
        # a worker registers only under the worker_id that is its connection identity
        return self._workers.get(worker_id.encode())

    @property
    def serving_by_task(self) -> dict[pb.TaskKind, set[str]]:
        """The models live workers serve, by task."""
        served: dict[pb.TaskKind, set[str]] = {}
        for worker in self._workers.values():
            served.setdefault(worker.task, set()).update(worker.models)
        return served

    @property
    def models_by_task(self) -> dict[pb.TaskKind, set[str]]:
        """The models requests may name, by task: served now, or in their grace."""
        models = self.serving_by_task
        for task, model in self.catalog.in_grace():
            models.setdefault(task, set()).add(model)
        return models

    def model_view(self) -> ModelView:
        """What admission checks each request against; kept until the pool or the
        catalog changes (recomputing it walks every worker, on every admission)."""
        if self._model_view is None:
            self._model_view = self._make_model_view()
        return self._model_view

    def _make_model_view(self) -> ModelView:
        serving = self.serving_by_task
        max_model_lens = {
            (task, m): self.max_model_len(task, m) for task, models in serving.items() for m in models
        }
        return ModelView(self.models_by_task, serving, max_model_lens)

    def max_model_len(self, task: pb.TaskKind, model: str) -> int:
        """The shortest context any live worker serving the model registered (any of them
        may get a request); 0 when none of them told."""
        lens = [w.max_model_len for w in self._workers.values() if w.task == task and w.serves(model)]
        return min((n for n in lens if n > 0), default=0)

    def require_worker(self, identity: bytes, register: pb.WorkerRegister, now_s: float) -> ConnectedWorker:
        """Add a worker (replacing any earlier record under the same identity)."""
        assert identity not in self._workers, "delete the old record (and re-queue its work) first"
        interval_s = (register.heartbeat_interval_ms / 1000) or self.default_heartbeat_interval_s
        worker = ConnectedWorker(
            worker_id=register.worker_id or identity.decode(errors="replace"),
            identity=identity,
            models=frozenset(register.models),
            task=register.task,
            device=register.device,
            max_num_seqs=max(1, register.max_num_seqs),
            heartbeat_interval_s=interval_s,
            expiry_s=now_s + HEARTBEAT_LIVENESS * interval_s,
            max_model_len=register.max_model_len,
        )
        self._workers[identity] = worker
        self.catalog.note_served(worker.model_keys)
        self._model_view = None
        return worker

    def refresh(self, identity: bytes, now_s: float) -> ConnectedWorker | None:
        worker = self._workers.get(identity)
        if worker is not None:
            worker.expiry_s = now_s + HEARTBEAT_LIVENESS * worker.heartbeat_interval_s
        return worker

    def delete_worker(self, identity: bytes, now_s: float | None = None) -> ConnectedWorker | None:
        worker = self._workers.pop(identity, None)
        if worker is not None:
            self._orphan_models(worker, time.monotonic() if now_s is None else now_s)
            self._model_view = None
        return worker

    def mark_draining(self, worker: ConnectedWorker) -> bool:
        """The worker finishes what it runs, then leaves: none of its slots is offered
        again. False if it was draining already."""
        was_draining = worker.is_draining
        worker.is_draining = True
        return not was_draining

    def purge_expired(self, now_s: float) -> list[ConnectedWorker]:
        expired = [w for w in self._workers.values() if w.expiry_s < now_s]
        for worker in expired:
            del self._workers[worker.identity]
            self._orphan_models(worker, now_s)
            self._model_view = None
        return expired

    def purge_models(self, now_s: float) -> list[ModelKey]:
        """Forget the models whose last worker left more than the grace ago."""
        forgotten = self.catalog.purge_expired(now_s)
        if forgotten:
            self._model_view = None
        return forgotten

    def _orphan_models(self, gone: ConnectedWorker, now_s: float) -> None:
        serving = self.serving_by_task
        orphans = [(task, m) for task, m in gone.model_keys if m not in serving.get(task, ())]
        self.catalog.note_orphaned(orphans, now_s)
