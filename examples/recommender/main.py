"""Embed a catalogue once through llmos, recommend items to synthetic users by cosine
similarity to their history, compare hit rate@k on held-out interactions with a
popularity baseline, and have the generative model explain one recommendation.

    python -m examples.recommender --broker-address tcp://127.0.0.1:5555

Needs a stack with an embedding worker (`llmos worker --model minilm`) and a
generation worker (README.md). The last line printed is a JSON object of the figures.
"""

from __future__ import annotations

import json
import sys
import time

import click

from examples.recommender.data import DEFAULT_SEED, Item, User, load_catalogue, make_users
from examples.recommender.recommend import EmbeddingRecommender, PopularityRecommender, hit_rate
from llmos.cli import broker_address_option, report_error
from llmos.client import Client
from llmos.errors import LlmosError

SMALL_NUM_USERS = 40
NUM_SHOWN = 5  # recommendations printed for the example user
NUM_HISTORY_IN_PROMPT = 3


def embed_catalogue(
    client: Client, items: list[Item], tier: str, model: str
) -> tuple[list[list[float]], str]:
    """One unit vector per item, in catalogue order, and the model that made them."""
    started_s = time.perf_counter()
    result = client.embed([item.text for item in items], tier=tier, model=model)
    elapsed_s = time.perf_counter() - started_s
    embeddings = [list(embedding.values) for embedding in result.embeddings]
    click.echo(
        f"embedded {len(items)} items ({result.usage.prompt_tokens} tokens) in {elapsed_s:.2f} s: "
        f"{len(embeddings[0])} dims by {result.model} on {result.worker_id}"
    )
    return embeddings, result.model


def explanation_prompt(items: list[Item], user: User, recommended: int) -> str:
    liked = ", ".join(items[index].title for index in user.seen[-NUM_HISTORY_IN_PROMPT:])
    return (
        f"A customer recently bought: {liked}. We recommend the {items[recommended].title} "
        f"({items[recommended].description}) In one sentence, why would they like it?\nAnswer:"
    )


def show_user(items: list[Item], user: User, recommender: EmbeddingRecommender) -> list[int]:
    similarities = recommender.similarities(user)
    recommended = recommender.recommend(user, NUM_SHOWN)
    click.echo(f"{user.user_id} (likes {user.favourite} most) has seen:")
    for index in user.seen:
        click.echo(f"    [{items[index].category}] {items[index].title}")
    click.echo(f"  recommended (held out: {items[user.held_out].title}):")
    for index in recommended:
        click.echo(f"    {similarities[index]:.3f}  [{items[index].category}] {items[index].title}")
    return recommended


@click.command()
@broker_address_option
@click.option("--users", "num_users", type=int, default=200, show_default=True, help="synthetic users")
@click.option("--small", is_flag=True, help=f"{SMALL_NUM_USERS} users (for tests)")
@click.option("-k", "--k", "k", type=int, default=10, show_default=True, help="recommendations per user")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="seed of the synthetic users")
@click.option("--tier", default="", help="queue tier (empty: the broker's default)")
@click.option("--embed-model", default="", help="embedding model (empty: any)")
@click.option("--generate-model", default="", help="generative model for the explanation (empty: any)")
@click.option("--max-tokens", type=int, default=48, show_default=True, help="of the explanation")
@click.option("--timeout-s", type=float, default=120.0, show_default=True, help="per request")
def main(
    broker_address: str,
    num_users: int,
    small: bool,
    k: int,
    seed: int,
    tier: str,
    embed_model: str,
    generate_model: str,
    max_tokens: int,
    timeout_s: float,
) -> None:
    """Content-based recommendations from embeddings served by llmos."""
    items = load_catalogue()
    users = make_users(items, SMALL_NUM_USERS if small else num_users, seed)
    try:
        with Client(broker_address, timeout_s=timeout_s) as client:
            embeddings, embedding_model = embed_catalogue(client, items, tier, embed_model)
            recommender = EmbeddingRecommender(embeddings)
            popularity = PopularityRecommender(users, len(items))
            scores = {
                "hit_rate": hit_rate(recommender.recommend, users, k),
                "popularity_hit_rate": hit_rate(popularity.recommend, users, k),
            }
            click.echo(
                f"hit rate@{k} on {len(users)} users' held-out items: embeddings {scores['hit_rate']:.3f}, "
                f"popularity baseline {scores['popularity_hit_rate']:.3f}"
            )
            recommended = show_user(items, users[0], recommender)
            answer = client.generate(
                explanation_prompt(items, users[0], recommended[0]),
                model=generate_model,
                tier=tier,
                max_tokens=max_tokens,
                temperature=0.0,
            )
    except LlmosError as exc:
        sys.exit(report_error(exc, broker_address, is_accepted=False))
    explanation = " ".join(answer.text.split())  # one line, whatever the model wrote
    click.echo(f"why {items[recommended[0]].title}? ({answer.model}): {explanation}")
    figures = {
        "example": "recommender",
        "num_items": len(items),
        "num_users": len(users),
        "k": k,
        **scores,
        "embedding_model": embedding_model,
        "dims": len(embeddings[0]),
        "user": users[0].user_id,
        "recommended": [items[index].title for index in recommended],
        "generate_model": answer.model,
        "explanation": explanation,
    }
    click.echo(json.dumps(figures))
