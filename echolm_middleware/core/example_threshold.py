"""The least utility an example needs, per tenant, lowered by evidence: the dynamic utility threshold.

One bar cannot serve every workload. On Banking77's train items a bar of 0.3 instead of 0.5 gave the cheap
tier +16.7 points (+9.6 to +24.6) on the items the 0.5 bar showed no example (a near question's label helps),
and on NQ-open's it gave -0.1 (a different fact's answer does not help)
(benchmarks/results/threshold-study-2026-12-06). So each tenant's bar starts at `retrieval.threshold` and
steps down one band at a time where the tenant's own evidence says examples in the band below it help:

- Exploration, a randomised trial: a request whose most useful example lies in the band just below the
  tenant's bar, [bar - step, bar), is shown it with probability `explore_share` (arm "shown"), is not shown
  it with the same probability (arm "hidden"), and is routed as usual otherwise. Both arms are sent to the
  cheapest tier the request may use, whatever the router would choose: so each arm's answers are that
  tier's, drawn alike (load, the arm's own context bucket and an idle strongest tier do not decide which
  of them are answered and scored), and the arm without examples is scored as often as the other.
- Evidence: the score (0-1) of such an answer, from feedback or a shadow comparison with the strongest tier
  (a quality target compares every explored request), is added to its arm's count for that tenant and
  band, in the shared state beside the router's posteriors (every worker's evidence).
- The bar moves below a band once the shown arm beats the hidden one with probability `confidence` (Beta(1,1)
  posteriors, normal approximation), each arm with at least `min_evidence` scores; never below `lowest`.
  A band that has not passed once each arm holds `max_evidence` scores is explored no more: its examples
  had their chance, and the trial's cost (its requests' answers by the cheapest tier) stays bounded.
  The bar is recomputed from the kept counts (no state of its own), so every worker reads the same bar.

It never raises the bar above `retrieval.threshold`: examples above it are the ones the cheap tier's
posteriors were learned with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from echolm_middleware.config import DynamicThresholdSettings

# How the arms' counts are kept among the router's posteriors: (tier, bucket). No tier has this name.
EVIDENCE_TIER = "~example-threshold"
Arm = Literal["shown", "hidden"]


def evidence_bucket(band: float, arm: Arm) -> str:
    """The bucket name of one arm of the band whose lower edge is `band` (no "|": tenants are appended)."""
    return f"{band:.2f}:{arm}"


@dataclass(frozen=True)
class Band:
    """One band below a bar and what the evidence on it says."""

    low: float  # its lower edge: the bar once it is lowered past this band
    high: float  # its upper edge: the bar it is explored under
    shown: tuple[float, float]  # (successes, failures) of the explored arm
    hidden: tuple[float, float]
    p_shown_better: float

    @property
    def scores(self) -> tuple[float, float]:
        return sum(self.shown), sum(self.hidden)


def p_better(a: tuple[float, float], b: tuple[float, float]) -> float:
    """P(the rate behind counts `a` exceeds the one behind `b`), Beta(1,1) priors, normal approximation."""
    (sa, fa), (sb, fb) = a, b
    alpha_a, beta_a, alpha_b, beta_b = sa + 1, fa + 1, sb + 1, fb + 1
    mean_a, mean_b = alpha_a / (alpha_a + beta_a), alpha_b / (alpha_b + beta_b)
    var_a = alpha_a * beta_a / ((alpha_a + beta_a) ** 2 * (alpha_a + beta_a + 1))
    var_b = alpha_b * beta_b / ((alpha_b + beta_b) ** 2 * (alpha_b + beta_b + 1))
    z = (mean_a - mean_b) / math.sqrt(var_a + var_b)
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@dataclass(frozen=True)
class TenantThreshold:
    """A tenant's bar and the band explored under it (None: nothing is explored: the bar is at `lowest`, or
    the band below it was tried for `max_evidence` scores an arm without passing)."""

    bar: float
    explored: Band | None
    passed: tuple[Band, ...]  # the bands the evidence lowered the bar past, highest first


def tenant_threshold(
    base: float, settings: DynamicThresholdSettings, evidence: Mapping[tuple[str, str], tuple[float, float]]
) -> TenantThreshold:
    """The bar from one tenant's kept evidence (`evidence`: its posteriors, (tier, bucket) -> counts)."""
    bar = base
    passed: list[Band] = []
    if not settings.enabled:
        return TenantThreshold(bar, None, ())
    while bar - settings.step >= settings.lowest - 1e-9:
        low = round(bar - settings.step, 2)
        shown = evidence.get((EVIDENCE_TIER, evidence_bucket(low, "shown")), (0.0, 0.0))
        hidden = evidence.get((EVIDENCE_TIER, evidence_bucket(low, "hidden")), (0.0, 0.0))
        band = Band(low, bar, shown, hidden, p_better(shown, hidden))
        enough = min(band.scores) >= settings.min_evidence
        if not (enough and band.p_shown_better >= settings.confidence):
            tried = min(band.scores) >= settings.max_evidence
            return TenantThreshold(bar, None if tried else band, tuple(passed))
        passed.append(band)
        bar = low
    return TenantThreshold(bar, None, tuple(passed))
