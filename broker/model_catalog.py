"""Which models the broker takes requests for (plain data, no sockets).

A model is taken while a live worker serves it, and for `grace_s` after its
last worker left: a worker that restarts, or loses its heartbeats for a moment,
finds its queue waiting. After the grace the model is forgotten, so a name a
worker once claimed (or a phantom made up) does not stay in the broker, nor
stay its default model, for good.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmos.wire import pb

ModelKey = tuple[pb.TaskKind, str]  # (task, model name)


class ModelCatalog:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._gone_at_s: dict[ModelKey, float] = {}  # in grace: when its last worker left

    def note_served(self, keys: Iterable[ModelKey]) -> None:
        """A worker serves these again: their grace ends."""
        for key in keys:
            self._gone_at_s.pop(key, None)

    def note_orphaned(self, keys: Iterable[ModelKey], now_s: float) -> None:
        """No live worker serves these any more: their grace starts (once)."""
        for key in keys:
            self._gone_at_s.setdefault(key, now_s)

    def in_grace(self) -> list[ModelKey]:
        return list(self._gone_at_s)

    def purge_expired(self, now_s: float) -> list[ModelKey]:
        """Forget the models whose grace ended by `now_s`; return them."""
        expired = [key for key, gone_at_s in self._gone_at_s.items() if now_s - gone_at_s >= self.grace_s]
        for key in expired:
            del self._gone_at_s[key]
        return expired
