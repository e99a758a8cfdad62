"""Recommenders and their evaluation: plain lists of floats in, item indices out.

The embedding recommender scores every item by the cosine similarity between its
embedding and the user's profile, the mean of the embeddings of the items the user
interacted with; the popularity baseline ranks items by how many users interacted
with them. Both leave out what the user has seen. Hit rate@k is the share of users
whose held-out item is among their top k.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Callable, Sequence

from examples.recommender.data import User

Vector = list[float]
Recommender = Callable[[User, int], list[int]]


def dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(map(operator.mul, a, b))


def unit_mean(vectors: Sequence[Sequence[float]]) -> Vector:
    """The mean of `vectors`, scaled to length 1."""
    assert vectors, "a profile needs at least one item"
    mean = [sum(column) / len(vectors) for column in zip(*vectors)]
    norm = math.sqrt(dot(mean, mean)) or 1.0
    return [value / norm for value in mean]


def top_k(scores: Sequence[float], k: int, exclude: Sequence[int]) -> list[int]:
    """The k best-scoring indices not in `exclude`, best first (ties: lower index first)."""
    excluded = set(exclude)
    ranked = sorted((i for i in range(len(scores)) if i not in excluded), key=lambda i: (-scores[i], i))
    return ranked[:k]


class EmbeddingRecommender:
    def __init__(self, embeddings: list[Vector]) -> None:
        self.embeddings = embeddings  # one unit vector per item, by item index

    def profile(self, user: User) -> Vector:
        return unit_mean([self.embeddings[index] for index in user.seen])

    def similarities(self, user: User) -> list[float]:
        """Cosine similarity of each item to the user's profile (both are unit vectors)."""
        profile = self.profile(user)
        return [dot(profile, embedding) for embedding in self.embeddings]

    def recommend(self, user: User, k: int) -> list[int]:
        return top_k(self.similarities(user), k, user.seen)


class PopularityRecommender:
    def __init__(self, users: list[User], num_items: int) -> None:
        counts = Counter(index for user in users for index in user.seen)  # never the held-out items
        self.counts = [float(counts[index]) for index in range(num_items)]

    def recommend(self, user: User, k: int) -> list[int]:
        return top_k(self.counts, k, user.seen)


def hit_rate(recommend: Recommender, users: list[User], k: int) -> float:
    """The share of users whose held-out item is in their top k."""
    assert users
    return sum(user.held_out in recommend(user, k) for user in users) / len(users)
