"""``GET /metrics``: the server's counters in Prometheus text format (``prometheus_client``, one registry a server).

Names (all prefixed ``vhtool_serve_``): ``requests_total{route,status}``, ``texts_total{route,status}``,
``tokens_total`` (tokens scored), ``texts_dropped_total`` (client went away before compute),
``batch_failures_total``, ``queue_texts`` (gauge: admitted, not yet answered), ``batch_texts`` and
``batch_padded_tokens`` (histograms per forward), ``queue_seconds`` (enqueue to forward, per text),
``compute_seconds`` (per forward), ``request_seconds{route}``.
"""

from __future__ import annotations

from typing import Any

from vhtool.serve.batcher import BatchStats

PREFIX = "vhtool_serve"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144)


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (several servers may live in one process)."""

    def __init__(self, *, queue_depth: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.texts = Counter(f"{PREFIX}_texts", "Texts received by route and status.", ["route", "status"], registry=r)
        self.tokens = Counter(f"{PREFIX}_tokens", "Tokens scored (real, not padding).", registry=r)
        self.dropped = Counter(
            f"{PREFIX}_texts_dropped", "Texts dropped before compute: the client went away.", registry=r
        )
        self.batch_failures = Counter(
            f"{PREFIX}_batch_failures", "Forwards that raised (their requests got 500).", registry=r
        )
        queue = Gauge(f"{PREFIX}_queue_texts", "Texts admitted and not yet answered.", registry=r)
        queue.set_function(queue_depth)
        self.batch_texts = Histogram(f"{PREFIX}_batch_texts", "Texts per forward.", buckets=_SIZE_BUCKETS, registry=r)
        self.batch_padded = Histogram(
            f"{PREFIX}_batch_padded_tokens", "Padded tokens per forward.", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            f"{PREFIX}_queue_seconds", "Seconds a text waited for its forward.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.compute_seconds = Histogram(
            f"{PREFIX}_compute_seconds", "Seconds per forward.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_seconds", "Seconds per request.", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )

    def batch(self, stats: BatchStats) -> None:
        """Records one forward (called on the model thread; prometheus_client is thread-safe)."""
        self.batch_texts.observe(stats.texts)
        self.batch_padded.observe(stats.padded_tokens)
        self.compute_seconds.observe(stats.compute_seconds)
        for s in stats.queue_seconds:
            self.queue_seconds.observe(s)
        if stats.failed:
            self.batch_failures.inc()
        else:
            self.tokens.inc(stats.tokens)

    def request(self, route: str, status: int, texts: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        if texts:
            self.texts.labels(route=route, status=str(status)).inc(texts)
        self.request_seconds.labels(route=route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["Metrics"]
