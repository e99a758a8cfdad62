"""How long each tier's answers run against their max_tokens (plain data).

An answer's *fill* is the share of its max_tokens it used: generated tokens ÷
max_tokens, at most 1. The scheduler is told, per tier, the recent mean fill
(`TierAnswers.mean_fill`, shown as `TierStatus.answer_fill`) over answers the
model ended or the bound cut (LENGTH, STOP, EOS). Near 1, a request's
max_tokens is its answer's length, and a policy may order by it (`mlfq` then
joins the level its bound needs); a cancelled, failed or expired answer says
nothing about length and is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmos.wire import pb

# The mean follows about the last this many answers of a tier: traffic changes.
ANSWERS_AVERAGED = 64
LENGTH_FINISH_REASONS = frozenset({pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP, pb.FINISH_REASON_EOS})


@dataclass
class TierFill:
    num_answers: int = 0
    mean_fill: float = 0.0


class AnswerFills:
    """Per tier, how many answers were counted and their recent mean fill."""

    def __init__(self) -> None:
        self._by_tier: dict[str, TierFill] = {}

    def record(self, tier: str, finish_reason: int, num_generated: int, max_tokens: int) -> None:
        """Count one finished answer (others are ignored: see the module's docstring)."""
        if finish_reason not in LENGTH_FINISH_REASONS or max_tokens <= 0:
            return
        fill = min(1.0, num_generated / max_tokens)
        entry = self._by_tier.setdefault(tier, TierFill())
        entry.num_answers += 1
        # the exact mean of the first answers, then an exponential one
        entry.mean_fill += (fill - entry.mean_fill) / min(entry.num_answers, ANSWERS_AVERAGED)

    def fill(self, tier: str) -> TierFill:
        """One tier's answers counted and mean fill (none and 0 before its first answer)."""
        return self._by_tier.get(tier) or TierFill()

    def tier_answers(self) -> list[pb.TierAnswers]:
        return [
            pb.TierAnswers(tier=tier, num_answers=entry.num_answers, mean_fill=entry.mean_fill)
            for tier, entry in self._by_tier.items()
        ]
