"""Two-stage example selection: score stage-1 candidates by utility, then keep the best few.

Stage 2 follows DESIGN.md §2.3: a transparent logistic scorer over (similarity, answer quality, source
tier, offload record, age) whose weights start from config and are fitted online from feedback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from echolm_middleware.core.types import Candidate, ScoredExample

FEATURES = ("similarity", "quality", "source", "offload", "age")
_SECONDS_PER_DAY = 86400.0


def utility_features(
    candidate: Candidate, *, now: float, tier_strength: Mapping[str, float], half_life_days: float
) -> dict[str, float]:
    """The stage-2 feature vector of one candidate."""
    example = candidate.example
    age_days = max(0.0, now - example.created_at) / _SECONDS_PER_DAY
    return {
        "similarity": candidate.similarity,
        "quality": example.quality,
        # An answer from a tier no longer configured counts as middling.
        "source": tier_strength.get(example.source_tier, 0.5),
        "offload": example.offload_rate,
        # 0 when fresh, −1 after one half-life: old answers may have gone stale.
        "age": -age_days / half_life_days,
    }


def utility(features: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Logistic utility in (0, 1): the estimated chance this example helps a cheaper tier answer."""
    z = weights["bias"] + sum(weights[name] * features[name] for name in FEATURES)
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def fit_step(
    weights: Mapping[str, float], features: Mapping[str, float], target: float, learning_rate: float
) -> dict[str, float]:
    """One online logistic-regression step towards an observed outcome (0-1)."""
    error = target - utility(features, weights)
    updated = dict(weights)
    updated["bias"] += learning_rate * error
    for name in FEATURES:
        updated[name] += learning_rate * error * features[name]
    return updated


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def _near_duplicate(a: ScoredExample, b: ScoredExample, limit: float) -> bool:
    ea, eb = a.candidate.embedding, b.candidate.embedding
    if ea is not None and eb is not None:
        return _cosine(ea, eb) >= limit
    return " ".join(a.candidate.example.prompt.lower().split()) == " ".join(b.candidate.example.prompt.lower().split())


def select_examples(
    scored: Sequence[ScoredExample],
    *,
    k: int,
    threshold: float,
    token_budget: int,
    near_duplicate_similarity: float,
    count_tokens: Callable[[ScoredExample], int],
    acceptable: Callable[[ScoredExample], bool] = lambda _: True,
    alone_at: float | None = None,
) -> list[ScoredExample]:
    """Keep at most k acceptable examples above the threshold, within the token budget, without
    near-duplicates; only one where the most useful kept example is at least `alone_at` similar to the
    request (None: never). On a CPU each example's tokens are paid for in prefill, and a near-repeat of
    the request says what the others would (README "Shorter examples").

    `acceptable` is asked only of examples that would otherwise be kept, most useful first: a costly
    check (the injection screen reads whole answers) runs on a few examples, not on every candidate.
    The result is ordered by ascending utility so the most useful example sits nearest the question.
    """
    kept: list[ScoredExample] = []
    spent = 0
    for item in sorted(scored, key=lambda s: s.utility, reverse=True):
        if len(kept) >= k or item.utility < threshold:
            break
        if kept and alone_at is not None and kept[0].candidate.similarity >= alone_at:
            break
        if any(_near_duplicate(item, other, near_duplicate_similarity) for other in kept):
            continue
        tokens = count_tokens(item)
        if spent + tokens > token_budget or not acceptable(item):
            continue
        spent += tokens
        kept.append(ScoredExample(item.candidate, item.utility, item.features, tokens))
    kept.reverse()
    return kept
