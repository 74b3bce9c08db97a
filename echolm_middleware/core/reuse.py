"""The reuse choice: serve the nearest cached answer as it is, without calling a model.

A semantic cache that answers every near request hurts quality on average (the paper's finding, and
the lab's tables), yet for some requests the cached answer is exactly right: the same label, the same
fact asked again. The offload model (`core.offload_model`) estimates, per request, the chance that the
nearest answer is as good as a fresh answer from the strongest tier; the request is served from the
cache where that chance clears `routing.reuse.min_probability`; and, as an arm of the router
(`routing.reuse.stand_in`), in place of a cheaper tier the router chose where the cached answer's expected
quality (that chance times the strongest tier's quality) is at least that tier's. The estimate moves online with
each tenant's evidence (feedback, quality-target comparisons), starting from weights fitted offline on
the lab's training data.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from echolm_middleware.config import ReuseSettings
from echolm_middleware.core.offload_model import FEATURES, OffloadModel, offload_features
from echolm_middleware.core.pii import has_placeholder
from echolm_middleware.core.types import Candidate
from echolm_middleware.errors import ConfigError

# Fitted by `echolm answers --workload banking77 --study --study-with nq_open` on the two warm pools of
# the lab's training data (8,610 items, leave-one-out), never on the requests a benchmark measures; the
# same run chose REUSE_MIN_PROBABILITY there (the lowest bar whose reuse cost at most 1% of the pools'
# own quality). A pool item's label is 1 where the nearest other answer scores more than its own, or the
# same and either scores above 0 or says the same thing (`offload_study.reuse_label`: a "tie" of two
# wrong answers to different questions is no reason to serve one). Held out on Banking77's 1,000
# requests: Brier 0.130, AUC 0.859 (benchmarks/results/reuse-2026-12-03/).
REUSE_WEIGHTS: tuple[float, ...] = (-5.006, 2.832, 2.932, -0.039, 3.806, -0.113, -0.171)
REUSE_MIN_PROBABILITY = 0.5

# Parameters that bound the answer's length: a cached answer longer than the caller allows is not reused.
_LENGTH_LIMITS = ("max_tokens", "max_completion_tokens")


@dataclass(frozen=True)
class ReuseCandidate:
    """The nearest cached answer and the model's estimate that it is as good as the strongest tier's."""

    candidate: Candidate
    probability: float
    features: list[float]

    @property
    def answer(self) -> str:
        return self.candidate.example.answer


# How a tenant's reuse weights are kept among the state's weights: "reuse.<feature>|<tenant>".
STORED_PREFIX = "reuse."


def stored_weights(tenant: str, weights: Sequence[float]) -> dict[str, float]:
    """A tenant's reuse weights as the state keeps them."""
    return {f"{STORED_PREFIX}{name}|{tenant}": value for name, value in zip(FEATURES, weights, strict=True)}


def _by_tenant(stored: Mapping[str, float]) -> dict[str, list[float]]:
    """Each tenant's whole set of stored reuse weights (a partial or outdated set is left out)."""
    found: dict[str, dict[str, float]] = {}
    for key, value in stored.items():
        if key.startswith(STORED_PREFIX):
            name, sep, tenant = key.removeprefix(STORED_PREFIX).partition("|")
            if sep:
                found.setdefault(tenant, {})[name] = value
    return {tenant: [named[f] for f in FEATURES] for tenant, named in found.items() if set(named) == set(FEATURES)}


class ReuseModels:
    """One offload model per tenant, all starting from the configured weights; each learns only from its
    own tenant's evidence. `stored`: the weights the state kept (`stored_weights`), which take precedence."""

    def __init__(self, settings: ReuseSettings, stored: Mapping[str, float] | None = None) -> None:
        self._settings = settings
        self._start = list(settings.weights) if settings.weights is not None else list(REUSE_WEIGHTS)
        if len(self._start) != len(FEATURES):
            raise ConfigError(
                f"routing.reuse.weights: {len(self._start)} given, the model has {len(FEATURES)}"
                f" ({', '.join(FEATURES)})"
            )
        self._models: dict[str, OffloadModel] = {
            tenant: OffloadModel(weights) for tenant, weights in _by_tenant(stored or {}).items()
        }
        self._lock = threading.Lock()

    def weights(self, tenant: str) -> list[float]:
        with self._lock:
            model = self._models.get(tenant)
            return list(model.weights if model is not None else self._start)

    def estimate(self, tenant: str, candidates: Sequence[Candidate], query: str) -> ReuseCandidate | None:
        """The nearest candidate with its probability; None when retrieval found nothing."""
        if not candidates:
            return None
        features = offload_features(candidates, query)
        probability = OffloadModel(self.weights(tenant)).probability(features)
        nearest = max(candidates, key=lambda c: c.similarity)
        return ReuseCandidate(nearest, probability, features)

    def learn(self, tenant: str, features: Sequence[float], outcome: float) -> dict[str, float]:
        """Evidence on a reused answer: `outcome` 1 (as good as the strongest tier's), 0 (worse), or between.
        Returns the tenant's weights as the state keeps them (empty when nothing was learned)."""
        if len(features) != len(FEATURES):
            return {}  # a decision kept before the features changed: no evidence for this model
        with self._lock:
            model = self._models.setdefault(tenant, OffloadModel(list(self._start)))
            model.learn(features, outcome, self._settings.learning_rate)
            return stored_weights(tenant, model.weights)


def why_not_reused(params: Mapping[str, Any], not_cached: str, answer: str, answer_tokens: int) -> str:
    """Why a request may not be served a cached answer whatever the model says ("" when it may).

    Parameters that shape the answer (`stop`, `response_format`, a hot temperature: `not_cached`) ask for
    something a cached answer was not made for; a length limit below the cached answer's length would be
    broken by it.
    """
    if not_cached:
        return not_cached
    if has_placeholder(answer):
        # The scrubber replaced personal data in it before it was kept: fine as an example, not as an answer.
        return "the cached answer holds scrubbed personal data"
    for name in _LENGTH_LIMITS:
        limit = params.get(name)
        if isinstance(limit, int) and not isinstance(limit, bool) and answer_tokens > limit:
            return f"the cached answer ({answer_tokens} tokens) is longer than {name}={limit}"
    return ""
