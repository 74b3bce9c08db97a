"""Prometheus metrics: what EchoLM decided, what it saved, and where it failed open.

Every metric is named `echolm_*` and documented in README "Metrics". The doors call `metrics()` and
report what happened; nothing here ever raises into a request. Without `prometheus-client` installed
every call is a no-op.

Several workers: `echolm proxy --workers N` points PROMETHEUS_MULTIPROC_DIR at a fresh folder, each
worker writes its values there, and a scrape of any worker sums them (prometheus-client's multiprocess
mode); the store-size gauge reports the largest any worker saw.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from echolm_middleware.core.summary import DecisionSummary

logger = logging.getLogger("echolm")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Examples per request: 0-5 (retrieval.k is at most 5).
_EXAMPLE_BUCKETS = (0.5, 1.5, 2.5, 3.5, 4.5, 5.5)
_SIMILARITY_BUCKETS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)


class Metrics:
    """The `echolm_*` metrics on prometheus-client's default registry (one set per process)."""

    def __init__(self, prometheus: Any) -> None:
        counter, histogram, gauge = prometheus.Counter, prometheus.Histogram, prometheus.Gauge
        self.requests = counter(
            "echolm_requests", "Requests seen, by the tier that served them, tenant and action.",
            ["tier", "tenant", "action"],
        )  # fmt: skip
        self.examples = histogram(
            "echolm_examples_per_request", "Examples prepended to a routed request.", ["tier"],
            buckets=_EXAMPLE_BUCKETS,
        )  # fmt: skip
        self.best_similarity = histogram(
            "echolm_best_similarity", "Cosine similarity of the nearest cached request.", buckets=_SIMILARITY_BUCKETS
        )
        self.fail_open = counter(
            "echolm_fail_open", "Decisions that failed open (the request went to the model it named), by reason.",
            ["reason"],
        )  # fmt: skip
        self.cost_saved = counter(
            "echolm_cost_saved_usd",
            "Estimated USD saved against serving the same tokens on the strongest tier, by tenant.",
            ["tenant"],
        )
        self.upkeep_passes = counter("echolm_upkeep_passes", "Upkeep (replay) passes, by outcome.", ["outcome"])
        self.upkeep_tokens = counter("echolm_upkeep_tokens", "Strongest-tier tokens the upkeep spent.")
        self.upkeep_cost = counter("echolm_upkeep_cost_usd", "USD the upkeep spent on the strongest tier.")
        self.store_examples = gauge(
            "echolm_store_examples", "Cached examples per tenant.", ["tenant"], multiprocess_mode="max"
        )
        self.in_flight = gauge(
            "echolm_tier_in_flight",
            "Routed requests in flight per tier, as this worker's router sees them (read at scrape time).",
            ["tier"],
            multiprocess_mode="max",
        )
        self.tiers_left_out = counter(
            "echolm_tier_left_out",
            "Times a tier was left out of routing after its calls failed (a first failure or a failed try), by tier.",
            ["tier"],
        )
        self.threshold_explored = counter(
            "echolm_threshold_explored",
            "Requests in the utility threshold's trial (best example in the band below their tenant's threshold, "
            "sent to the cheapest tier), by arm (shown: with the band's examples; hidden: the comparison arm).",
            ["arm"],
        )
        self.coordination_errors = counter(
            "echolm_coordination_errors", "Redis commands that failed (load shared between workers), by what.",
            ["what"],
        )  # fmt: skip
        self._prometheus = prometheus

    def render(self) -> bytes:
        """The text exposition: every worker's values when PROMETHEUS_MULTIPROC_DIR is set, else this one's."""
        prometheus = self._prometheus
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = prometheus.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(prometheus.generate_latest(registry))
        return bytes(prometheus.generate_latest())


class _Ignore:
    """Accepts any metric call and does nothing (prometheus-client is not installed)."""

    def __getattr__(self, name: str) -> Any:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


_lock = threading.Lock()
_metrics: Metrics | None = None


def metrics() -> Metrics:
    """The process's metrics, created on first use."""
    global _metrics
    with _lock:
        if _metrics is None:
            try:
                import prometheus_client
            except ImportError:
                return _Ignore()  # type: ignore[return-value]
            _metrics = Metrics(prometheus_client)
        return _metrics


def quietly(report: Callable[[], object]) -> None:
    """Run one metrics update; a failure is logged, never raised into the request."""
    try:
        report()
    except Exception as exc:
        logger.warning("echolm: a metrics update failed: %s", exc)


class BoundedLabel:
    """Label values for a metric, at most `limit` distinct ones per process; later newcomers read "other".

    A tier label is whatever model a caller named (a pass-through request may name anything) and a
    tenant label grows with the teams: unbounded labels would grow the scrape and the process without
    end. The first values seen keep their own series.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return "other"


# Per process: a few configured tiers, and tenants up to what a scrape stays readable with.
tier_label = BoundedLabel(32)
tenant_label = BoundedLabel(200)


def observe_decision(summary: DecisionSummary) -> None:
    """One request's decision (tier, action, examples, best similarity): every door's requests pass here once."""

    def report() -> None:
        m = metrics()
        tier = tier_label(summary.tier or "unknown")
        m.requests.labels(tier=tier, tenant=tenant_label(summary.tenant), action=summary.action).inc()
        if summary.routed:
            m.examples.labels(tier=tier).observe(summary.examples)
        if summary.best_similarity is not None:
            m.best_similarity.observe(summary.best_similarity)

    quietly(report)


def observe_saving(tenant: str, saved_usd: float) -> None:
    """What one response cost less than the strongest tier would have (a counter: only savings count)."""

    def report() -> None:
        if saved_usd > 0:
            metrics().cost_saved.labels(tenant=tenant_label(tenant)).inc(saved_usd)

    quietly(report)


def observe_tier_left_out(tier: str) -> None:
    """The router left `tier` out after its calls failed (`core.tier_health`)."""
    quietly(lambda: metrics().tiers_left_out.labels(tier=tier_label(tier)).inc())


def observe_threshold_arm(arm: str) -> None:
    """A request fell in the band explored below its tenant's utility threshold (`core.example_threshold`)."""
    if arm in ("shown", "hidden"):
        quietly(lambda: metrics().threshold_explored.labels(arm=arm).inc())
