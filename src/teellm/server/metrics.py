"""Prometheus metrics. Labels are fixed vocabularies (endpoint, status, mode,
tenant name, model id): never prompt or output text, never token values."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    """One registry per server, so several apps in one process do not collide."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "teellm_requests",
            "API requests by endpoint, status and transport mode",
            ["endpoint", "status", "mode"],
            registry=r,
        )
        # Exact token counts scraped between two requests would give away each
        # answer's length, which the envelope's padding hides; so only a count of
        # requests per power-of-two size bucket, with no tenant label.
        self.tokens = Counter(
            "teellm_request_tokens",
            "Requests by kind (prompt or completion) and token count rounded up to a power of two",
            ["kind", "bucket"],
            registry=r,
        )
        self.latency = Histogram(
            "teellm_request_seconds",
            "Time from request to last byte, by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "teellm_time_to_first_token_seconds",
            "Time from request to first generated token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "teellm_requests_in_flight", "Generation requests in progress", registry=r
        )
        self.access_denied = Counter(
            "teellm_access_denied",
            "Requests refused by access control, by reason code",
            ["code"],
            registry=r,
        )
        self.attestations = Counter(
            "teellm_attestation_documents",
            "Attestation documents served, fresh (with nonce) or boot",
            ["kind"],
            registry=r,
        )
        self.ready = Gauge("teellm_ready", "1 when the server is ready to serve", registry=r)

    def count_tokens(self, kind: str, n: int) -> None:
        self.tokens.labels(kind=kind, bucket=token_bucket(n)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def token_bucket(n: int) -> str:
    """The label for ``n`` tokens: the next power of two, at least 16, "more" past 8192."""
    bucket = 16
    while bucket < n:
        bucket *= 2
        if bucket > 8192:
            return "more"
    return str(bucket)
