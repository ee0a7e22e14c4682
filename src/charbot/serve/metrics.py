"""Prometheus metrics of `charbot serve`, in a registry of its own (several servers can live in one test process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from charbot.health import LATENCY_BUCKETS, MetricsRegistry


class ServeMetrics(MetricsRegistry):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.requests = Counter("charbot_serve_requests", "HTTP requests answered, by route and status.", ["route", "status"], registry=r)
        self.replies = Counter("charbot_serve_replies", "Completions delivered, by kind.", ["kind"], registry=r)
        self.busy = Counter("charbot_serve_busy", "Completions turned away: queue full (429) or deadline passed (503).", ["why"], registry=r)
        self.cancelled = Counter("charbot_serve_cancelled", "Completions abandoned because the client went away.", registry=r)
        self.tokens = Counter("charbot_serve_tokens_generated", "Completion tokens generated.", registry=r)
        self.latency = Histogram("charbot_serve_reply_seconds", "Time from request to the whole reply.", registry=r, buckets=LATENCY_BUCKETS)
        self.first_token = Histogram("charbot_serve_first_token_seconds", "Time from request to the first streamed text.", registry=r,
                                     buckets=LATENCY_BUCKETS)
        self.queue_depth = Gauge("charbot_serve_queue_depth", "Generations running or waiting.", registry=r)
        self.inflight = Gauge("charbot_serve_inflight", "Generations running.", registry=r)
