"""Prometheus metrics, in a registry of the bot's own (several bots can live in one test process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# The backend's prompt-cache counters (Backend.cache_stats), read at each scrape.
CACHE_COUNTERS = {
    "hits": "Prompts that restored a saved KV state.",
    "misses": "Prompts that found no saved state sharing more than what a sequence kept.",
    "saved_tokens": "Prompt tokens not read again thanks to restored states.",
    "reused_tokens": "Prompt tokens not read again: kept in a sequence or restored.",
    "evicted_bytes": "Bytes of saved states pushed out of memory by the budget.",
}


class PromptCacheCollector:
    def __init__(self, stats: Callable[[], dict[str, int]]):
        self.stats = stats

    def collect(self):
        stats = self.stats()
        for name, doc in CACHE_COUNTERS.items():
            if name in stats:
                yield CounterMetricFamily(f"charbot_prompt_cache_{name}", doc, value=stats[name])
        if "stored_bytes" in stats:
            yield GaugeMetricFamily("charbot_prompt_cache_stored_bytes", "Bytes of saved KV states in memory.", value=stats["stored_bytes"])


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_seen = Counter("charbot_discord_messages_seen", "Messages the bot received.", registry=r)
        self.replies = Counter("charbot_discord_replies", "Replies sent (messages and slash commands).", ["kind"], registry=r)
        self.ignored = Counter("charbot_discord_ignored", "Messages not answered, by reason.", ["reason"], registry=r)
        self.errors = Counter("charbot_discord_errors", "Generations or sends that failed.", ["kind"], registry=r)
        self.busy = Counter("charbot_discord_busy", "Requests turned away by the cooldown or the queue limit.", ["why"], registry=r)
        self.tokens = Counter("charbot_discord_tokens_generated", "Completion tokens generated.", registry=r)
        self.latency = Histogram(
            "charbot_discord_reply_seconds", "Time from message to reply sent.", registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
        )
        self.queue_depth = Gauge("charbot_discord_queue_depth", "Generations running or waiting.", registry=r)
        self.gateway_latency = Gauge("charbot_discord_gateway_latency_seconds", "Heartbeat latency.", registry=r)

    def watch_prompt_cache(self, stats: Callable[[], dict[str, int]]) -> None:
        self.registry.register(PromptCacheCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)
