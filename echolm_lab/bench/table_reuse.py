"""The router's reuse choice scored off an answers table: fitted on the warm pool, checked on the requests.

The reuse model (`core.offload_model`, as `core.reuse` runs it on the request path) is fitted on the
pool alone, leave-one-out: each pool item's features come from its nearest *other* pool items, and its
label says whether the nearest other answer scores at least what its own (strong or teacher) answer
does. Its threshold is chosen on the pool too: the lowest whose reuse costs at most `MARGIN` of the
pool's own quality. The requests are then routed by it (reuse where P clears the threshold, else the
strong tier) and scored paired with strong-only like every other policy; they are never fitted on.

Retrieval here is exact search by matrix product over MiniLM vectors: what the engine's stores return
for a workload whose requests share one context (one system prompt, no history), as the built-in ones do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from echolm_lab.bench.answers_table import REUSE, STRONG
from echolm_lab.bench.offload_study import Calibration, fit_logistic, reuse_label
from echolm_lab.bench.table_build import TableWorkload
from echolm_lab.bench.table_policies import Embed, unit_vectors
from echolm_lab.bench.table_scores import Policy
from echolm_middleware.core.offload_model import NEIGHBOURS, OffloadModel, offload_features
from echolm_middleware.core.types import Candidate, Example

MARGIN = 0.01  # the quality (share of the pool's own score) reuse may cost on the pool
THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5 .. 0.95


@dataclass(frozen=True)
class ReuseFit:
    weights: list[float]
    threshold: float
    pool_items: int
    pool_reuse_share: float  # share of pool items reused at the threshold (in-sample)


def _candidates(prompts: Sequence[str], answers: Sequence[str], row: np.ndarray, order: np.ndarray) -> list[Candidate]:
    return [Candidate(Example(prompts[j], prompts[j], answers[j], "strong", 1.0, 0.0), float(row[j])) for j in order]


def nearest_candidates(
    embed: Embed, pool: Mapping[str, str], queries: Sequence[str], *, leave_self_out: bool = False
) -> dict[str, list[Candidate]]:
    """Each query's NEIGHBOURS nearest pool entries as the engine's candidates; with `leave_self_out`, a
    query that is itself a pool prompt never finds itself."""
    prompts, texts = list(pool), list(pool.values())
    if not prompts or not queries:
        return {}
    similarities = unit_vectors(embed, queries) @ unit_vectors(embed, prompts).T
    if leave_self_out:
        index = {prompt: j for j, prompt in enumerate(prompts)}
        for i, query in enumerate(queries):
            if query in index:
                similarities[i, index[query]] = -np.inf
    k = min(NEIGHBOURS, len(prompts) - (1 if leave_self_out else 0))
    found = {}
    for i, query in enumerate(queries):
        row = similarities[i]
        top = np.argpartition(-row, k - 1)[:k]
        top = top[np.argsort(-row[top])]
        found[query] = _candidates(prompts, texts, row, top)
    return found


@dataclass(frozen=True)
class PoolRow:
    """One pool item asked of the pool without itself: the model's inputs and what reuse did for it."""

    features: list[float]
    label: float  # offload_study.reuse_label: the nearest other answer is as good as the item's own
    loss: float  # the item's own score minus the nearest other answer's
    own: float  # the item's own answer's score


def pool_reuse_rows(embed: Embed, pool: Mapping[str, str], metric: Callable[[str, str], float]) -> list[PoolRow]:
    """Leave-one-out rows for the reuse model from the pool alone (`metric(answer, pool prompt)`)."""
    found = nearest_candidates(embed, pool, list(pool), leave_self_out=True)
    rows = []
    for prompt, candidates in found.items():
        if candidates:
            nearest = candidates[0].example.answer
            own, reused = metric(pool[prompt], prompt), metric(nearest, prompt)
            label = reuse_label(reused, own, nearest, pool[prompt])
            rows.append(PoolRow(offload_features(candidates, prompt), label, own - reused, own))
    return rows


def fit_reuse(rows: Sequence[PoolRow], *, margin: float = MARGIN) -> ReuseFit | None:
    """The reuse model fitted on `rows`, and the lowest threshold whose reuse costs at most `margin` of the
    rows' own quality (in-sample); None when the rows hold one label only."""
    if len({row.label for row in rows}) < 2:
        return None
    weights = fit_logistic([row.features for row in rows], [row.label for row in rows])
    model = OffloadModel(weights)
    probabilities = np.asarray([model.probability(row.features) for row in rows])
    loss = np.asarray([row.loss for row in rows])
    own_quality = max(float(np.mean([row.own for row in rows])), 1e-9)
    threshold = THRESHOLDS[-1]
    for candidate in THRESHOLDS:
        if float(np.where(probabilities >= candidate, loss, 0.0).mean()) <= margin * own_quality:
            threshold = candidate
            break
    return ReuseFit(weights, threshold, len(rows), float((probabilities >= threshold).mean()))


def fit_on_pool(
    embed: Embed, pool: Mapping[str, str], metric: Callable[[str, str], float], *, margin: float = MARGIN
) -> ReuseFit | None:
    """The reuse model and its threshold from the pool alone."""
    return fit_reuse(pool_reuse_rows(embed, pool, metric), margin=margin)


def learned_reuse(
    found: Mapping[str, Sequence[Candidate]], fit: ReuseFit, threshold: float | None = None
) -> tuple[Policy, dict[str, float]]:
    """Reuse where the fitted model's P clears the threshold, else the strong tier; and each request's P.
    `found`: each request's candidates (`nearest_candidates`), searched once for every fit and bar."""
    model = OffloadModel(fit.weights)
    probability = {query: model.probability(offload_features(c, query)) for query, c in found.items()}
    bar = fit.threshold if threshold is None else threshold

    def choose(prompt: str) -> str:
        return REUSE if probability.get(prompt, 0.0) >= bar else STRONG

    return choose, probability


def shipped_reuse_probabilities(found: Mapping[str, Sequence[Candidate]]) -> dict[str, float]:
    """Each request's P under the product's shipped reuse model (the one on the request path):
    P(the nearest cached answer is as good as the strong tier's). `found` as for `learned_reuse`."""
    from echolm_middleware.core.reuse import REUSE_MIN_PROBABILITY, REUSE_WEIGHTS

    _, probability = learned_reuse(found, ReuseFit(list(REUSE_WEIGHTS), REUSE_MIN_PROBABILITY, 0, 0.0))
    return probability


def pool_metric(source: TableWorkload) -> Callable[[str, str], float]:
    """The workload's metric for an answer to a pool prompt: `metric(answer, pool prompt)`."""
    metric = source.workload.score
    if metric is None:
        raise ValueError(f"{source.workload.name} is judged pairwise: it has no reference metric")
    items = {item.prompt: item for item in source.pool}
    return lambda answer, prompt: metric(answer, items[prompt])


def shipped_reuse_reliability(
    source: TableWorkload,
    pool: Mapping[str, str],
    strong_answers: Mapping[str, str],
    embed: Embed,
    judged: Mapping[str, Mapping[str, float]] | None = None,
) -> Calibration | None:
    """How well the product's shipped reuse model (the one on the request path) is calibrated on the
    workload's requests: its P(the nearest cached answer is as good as the strong tier's) against whether
    it was, by the workload's metric (`offload_study.reuse_label`) or, judged, by the tabled verdict on
    the reused answer (a tie or better). None where no request can be labelled."""
    from echolm_lab.bench.offload_study import calibration

    requests = [item for item in source.requests if item.prompt in strong_answers]
    found = nearest_candidates(embed, pool, [item.prompt for item in requests])
    probability = shipped_reuse_probabilities(found)
    metric = source.workload.score
    predicted, labels = [], []
    for item in requests:
        candidates = found.get(item.prompt)
        if not candidates:
            continue
        if metric is not None:
            reused, own = candidates[0].example.answer, strong_answers[item.prompt]
            label = reuse_label(metric(reused, item), metric(own, item), reused, own)
        elif judged is not None and REUSE in judged.get(item.prompt, {}):
            label = float(judged[item.prompt][REUSE] >= judged[item.prompt][STRONG])
        else:
            continue
        predicted.append(probability[item.prompt])
        labels.append(label)
    return calibration(predicted, labels) if labels else None
