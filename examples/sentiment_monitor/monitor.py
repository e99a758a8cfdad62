"""The rolling sentiment index per company and the alerts it raises: plain data in, plain data out.

A headline's sentiment is P(positive) - P(negative), in [-1, 1]. A company's index
is the mean sentiment of its last `window` headlines. An alert is raised when the
index swings past the threshold (above +threshold or below -threshold), once the
company has `window` headlines. Another alert on the same side waits until the index
has come back within half the threshold, so an index that wobbles around the
threshold raises one alert, not one per wobble.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

DEFAULT_WINDOW = 5
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Alert:
    company: str
    day: int
    index: float
    direction: str  # "positive" or "negative"
    headline: str  # the headline that tipped it


@dataclass
class SentimentMonitor:
    window: int = DEFAULT_WINDOW
    threshold: float = DEFAULT_THRESHOLD
    recent: dict[str, deque[float]] = field(default_factory=dict)  # company -> last `window` sentiments
    indices: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # company -> (day, index)
    alerts: list[Alert] = field(default_factory=list)
    alerted: dict[str, str] = field(default_factory=dict)  # company -> the side it last alerted on

    def observe(self, company: str, day: int, sentiment: float, headline: str) -> Alert | None:
        """Add one classified headline; the alert it raises, if any."""
        assert -1.0 <= sentiment <= 1.0, sentiment
        recent = self.recent.setdefault(company, deque(maxlen=self.window))
        recent.append(sentiment)
        index = sum(recent) / len(recent)
        self.indices.setdefault(company, []).append((day, index))
        if abs(index) < self.threshold / 2:
            self.alerted.pop(company, None)  # back to calm: the next swing alerts again
        side = self.side_of(index)
        if len(recent) < self.window or side is None or self.alerted.get(company) == side:
            return None
        self.alerted[company] = side
        alert = Alert(company, day, index, side, headline)
        self.alerts.append(alert)
        return alert

    def side_of(self, index: float) -> str | None:
        """Which threshold the index is past, if either."""
        if index > self.threshold:
            return "positive"
        if index < -self.threshold:
            return "negative"
        return None

    def latest(self) -> dict[str, float]:
        return {company: history[-1][1] for company, history in self.indices.items()}


def sentiment_of(scores: dict[str, float]) -> float:
    """P(positive) - P(negative) from a classification's label scores."""
    return scores.get("positive", 0.0) - scores.get("negative", 0.0)
