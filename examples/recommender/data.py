"""The catalogue (catalogue.tsv) and synthetic users whose histories follow their tastes.

Eighty items in five categories, sixteen each. A user likes one category most, often
a second one too, and the rest a little; each category's items have a popularity
that falls off with their (seeded, random) rank. A history is items drawn without
replacement with weight taste(category) x popularity(item); its last item is held
out for the evaluation. Everything comes from one `random.Random(seed)`, so the same
seed gives the same users.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

CATALOGUE_FILE = Path(__file__).with_name("catalogue.tsv")
DEFAULT_SEED = 7
FAVOURITE_SHARE = 0.7  # of a user's picks, from the favourite category
SECOND_SHARE = 0.2  # from a second category, for users who have one
SECOND_CATEGORY_PROBABILITY = 0.5
POPULARITY_EXPONENT = 1.0  # the item of rank r within its category is picked with weight 1 / r
MIN_HISTORY, MAX_HISTORY = 6, 10  # interactions per user, the held-out one included


@dataclass(frozen=True)
class Item:
    index: int
    category: str
    title: str
    description: str

    @property
    def text(self) -> str:
        """What is embedded."""
        return f"{self.title}: {self.description}"


@dataclass(frozen=True)
class User:
    user_id: str
    favourite: str
    history: tuple[int, ...]  # item indices, in interaction order; the last is held out

    @property
    def seen(self) -> tuple[int, ...]:
        return self.history[:-1]

    @property
    def held_out(self) -> int:
        return self.history[-1]


def load_catalogue(path: Path = CATALOGUE_FILE) -> list[Item]:
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    return [Item(index, row["category"], row["title"], row["description"]) for index, row in enumerate(rows)]


def make_users(items: list[Item], num_users: int, seed: int = DEFAULT_SEED) -> list[User]:
    rng = random.Random(seed)
    categories = sorted({item.category for item in items})
    popularity = item_popularity(items, rng)
    users = []
    for number in range(num_users):
        favourite, *others = rng.sample(categories, len(categories))
        taste = category_taste(favourite, others, rng)
        weights = [taste[item.category] * popularity[item.index] for item in items]
        length = rng.randint(MIN_HISTORY, MAX_HISTORY)
        history = draw_without_replacement(rng, weights, length)
        users.append(User(f"user-{number:03d}", favourite, tuple(history)))
    return users


def item_popularity(items: list[Item], rng: random.Random) -> dict[int, float]:
    """Within each category, a random order of items weighted 1, 1/2, 1/3, ..."""
    popularity = {}
    for category in sorted({item.category for item in items}):
        members = [item.index for item in items if item.category == category]
        rng.shuffle(members)
        for rank, index in enumerate(members, start=1):
            popularity[index] = 1.0 / rank**POPULARITY_EXPONENT
    return popularity


def category_taste(favourite: str, others: list[str], rng: random.Random) -> dict[str, float]:
    """Each category's share of a user's picks; they sum to 1."""
    has_second = rng.random() < SECOND_CATEGORY_PROBABILITY
    favourite_share = FAVOURITE_SHARE if has_second else FAVOURITE_SHARE + SECOND_SHARE
    taste = {favourite: favourite_share}
    rest = others
    if has_second:
        taste[others[0]] = SECOND_SHARE
        rest = others[1:]
    remainder = 1.0 - sum(taste.values())
    taste.update(dict.fromkeys(rest, remainder / len(rest)))
    return taste


def draw_without_replacement(rng: random.Random, weights: list[float], count: int) -> list[int]:
    remaining = dict(enumerate(weights))
    drawn = []
    for _ in range(count):
        indices = list(remaining)
        choice = rng.choices(indices, weights=[remaining[i] for i in indices])[0]
        drawn.append(choice)
        del remaining[choice]
    return drawn
