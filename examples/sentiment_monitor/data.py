"""The labelled headlines (headlines.tsv), their train/held-out split and their order in the stream.

Six fictional companies, thirty headlines each, in the order their stories unfold,
labelled positive, negative or neutral in the manner of the Financial PhraseBank.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

HEADLINES_FILE = Path(__file__).with_name("headlines.tsv")
LABELS = ("negative", "neutral", "positive")  # the classifier's id2label, in order
HELD_OUT_EVERY = 4  # every fourth headline of the file is held out of training


@dataclass(frozen=True)
class Headline:
    index: int  # line in headlines.tsv, from 0
    company: str
    label: str
    text: str
    day: int  # the company's n-th headline: one headline a company a day in the stream

    @property
    def is_held_out(self) -> bool:
        return self.index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1


def load_headlines(path: Path = HEADLINES_FILE) -> list[Headline]:
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    days: dict[str, int] = {}
    headlines = []
    for index, row in enumerate(rows):
        assert row["label"] in LABELS, f"line {index + 2}: unknown label {row['label']!r}"
        day = days.get(row["company"], 0)
        days[row["company"]] = day + 1
        headlines.append(Headline(index, row["company"], row["label"], row["headline"], day))
    return headlines


def training_headlines(headlines: list[Headline]) -> list[Headline]:
    return [headline for headline in headlines if not headline.is_held_out]


def news_stream(headlines: list[Headline], num_days: int = 0) -> list[Headline]:
    """Every company's headline of day 0, then of day 1, ...; the first `num_days` days (0: all)."""
    stream = sorted(headlines, key=lambda headline: (headline.day, headline.index))
    return [headline for headline in stream if not num_days or headline.day < num_days]
