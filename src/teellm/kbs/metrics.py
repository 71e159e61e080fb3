"""Prometheus metrics of one broker. Labels never carry secrets or client input
that is not bounded: denials are labelled by reason code only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class BrokerMetrics:
    """The broker's counters and histograms, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.challenges = Counter(
            "teellm_kbs_challenges", "Challenges issued", registry=self.registry
        )
        self.releases = Counter(
            "teellm_kbs_releases", "Keys released", ["model_id"], registry=self.registry
        )
        self.denials = Counter(
            "teellm_kbs_denials",
            "Key requests denied, by reason code",
            ["reason"],
            registry=self.registry,
        )
        self.verification_seconds = Histogram(
            "teellm_kbs_verification_seconds",
            "Time to verify and appraise evidence",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
