"""Prometheus metrics of the Discord bot, in a registry of its own (several bots can live in one test process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from charbot.health import LATENCY_BUCKETS, MetricsRegistry


class Metrics(MetricsRegistry):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.messages_seen = Counter("charbot_discord_messages_seen", "Messages the bot received.", registry=r)
        self.replies = Counter("charbot_discord_replies", "Replies sent (messages and slash commands).", ["kind"], registry=r)
        self.ignored = Counter("charbot_discord_ignored", "Messages not answered, by reason.", ["reason"], registry=r)
        self.errors = Counter("charbot_discord_errors", "Generations or sends that failed.", ["kind"], registry=r)
        self.busy = Counter("charbot_discord_busy", "Requests turned away by the cooldown or the queue limit.", ["why"], registry=r)
        self.character_replies = Counter("charbot_discord_character_replies", "Lines a character of the cast said, by how they were "
                                         "posted (webhook, or plain as the bot).", ["character", "via"], registry=r)
        self.character_errors = Counter("charbot_discord_character_errors", "Turns of a character of the cast that failed.", ["character"], registry=r)
        self.tokens = Counter("charbot_discord_tokens_generated", "Completion tokens generated.", registry=r)
        self.latency = Histogram("charbot_discord_reply_seconds", "Time from message to reply sent.", registry=r, buckets=LATENCY_BUCKETS)
        self.queue_depth = Gauge("charbot_discord_queue_depth", "Generations running or waiting.", registry=r)
        self.gateway_latency = Gauge("charbot_discord_gateway_latency_seconds", "Heartbeat latency.", registry=r)
