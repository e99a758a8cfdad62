"""The prefix-cache hit rate from the services' /metrics: prompt tokens the workers read
from their prefix caches (llmos:prefix_cache_hits_total) over the conversations' prompt
tokens the broker counted (llmos:prompt_tokens_total for the support tenant)."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from .chat import SUPPORT_TENANT

HITS_SAMPLE = "llmos:prefix_cache_hits_total"
PROMPT_TOKENS_SAMPLE = "llmos:prompt_tokens_total"
SCRAPE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CacheCounters:
    num_hit_tokens: float
    num_prompt_tokens: float

    def __sub__(self, before: CacheCounters) -> CacheCounters:
        return CacheCounters(
            self.num_hit_tokens - before.num_hit_tokens, self.num_prompt_tokens - before.num_prompt_tokens
        )

    @property
    def hit_rate(self) -> float | None:
        return self.num_hit_tokens / self.num_prompt_tokens if self.num_prompt_tokens else None


def metrics_url(endpoint: str) -> str:
    """`5567`, `host:5567` or a full URL, as the /metrics URL."""
    if endpoint.isdigit():
        endpoint = f"127.0.0.1:{endpoint}"
    if "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    return endpoint if endpoint.endswith("/metrics") else endpoint.rstrip("/") + "/metrics"


def scrape(endpoints: list[str]) -> CacheCounters:
    """Sum both counters over every endpoint: the broker holds the prompt tokens, each
    worker its hits, so the endpoints may be given in any order."""
    num_hits = num_prompt = 0.0
    for endpoint in endpoints:
        with urllib.request.urlopen(metrics_url(endpoint), timeout=SCRAPE_TIMEOUT_S) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == HITS_SAMPLE:
                    num_hits += sample.value
                elif sample.name == PROMPT_TOKENS_SAMPLE and sample.labels.get("tenant") == SUPPORT_TENANT:
                    num_prompt += sample.value
    return CacheCounters(num_hits, num_prompt)
