"""Routing policies scored off an answers table, and the most throughput each could reach on our servers.

Besides the three choices the table answers (strong, cheap, cheap with examples), a fourth costs no
inference: serving the nearest warm-pool answer as it is (a semantic cache's hit, `reuse`). Its answer
is read from the pool, so it is scored like the others without asking a model.

The baselines are policies over these choices, decided from the request alone, so their quality is exact
over every request of the table, paired with strong-only:

- the semantic cache at a similarity threshold: reuse at or above it, else the strong tier;
- the difficulty router (RouteLLM's similarity-weighted ranking) at a share of strong calls, its labels
  (did the cheap tier do as well as the strong one?) read from the table by cross-fitting: a request is
  predicted from the labels of the other folds only, never from its own answers.

A policy's ceiling is the highest arrival rate its shares allow on the equal-hardware deployments, from
each chosen answer's measured service time (the table's latency, both servers busy, one thread each):

- fixed split, one cheap and one strong server: each server's utilisation must stay below 1;
- elastic co-location, two slots shared by every tier: the two slots' utilisation must stay below 1;

each as a ratio to strong-only's ceiling on the same cores (two strong servers).
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from echolm_lab.bench.answers_table import CHEAP, CHEAP_WITH_EXAMPLES, POOL, REUSE, STRONG, Answer
from echolm_lab.bench.table_build import TableWorkload
from echolm_lab.bench.table_scores import Policy, PolicyScore, fixed, oracle, score_policy, scores_by_choice
from echolm_lab.bench.table_verdicts import Verdict, judged_scores

Embed = Callable[[Sequence[str]], Sequence[Sequence[float]]]
FOLDS = 5
SEMANTIC_THRESHOLDS = (0.95, 0.9, 0.8)
DIFFICULTY_STRONG_SHARES = (0.5, 0.25)
NEIGHBOURS = 10  # the difficulty router's k, as in the live baseline (`systems.DifficultyRouter`)


@dataclass(frozen=True)
class Neighbour:
    prompt: str  # the nearest pool prompt
    answer: str  # its answer (the strong tier's, or the external teacher's)
    similarity: float  # cosine of the two prompts' MiniLM vectors


def pool_answers(source: TableWorkload, answers: Sequence[Answer]) -> dict[str, str]:
    """Pool prompt -> the answer an example of it would carry (the teacher's where one taught the pool)."""
    if source.teacher_answers is not None:
        return {item.prompt: source.teacher_answers[item.prompt] for item in source.pool}
    pooled = {item.prompt for item in source.pool}
    return {a.item: a.answer for a in answers if a.choice == POOL and a.item in pooled and a.answer}


def remembering(embed: Embed) -> Embed:
    """`embed` that embeds each text once: the policies ask for the same pool and requests many times
    (MiniLM on one thread takes minutes per pass over a pool of thousands)."""
    seen: dict[str, Sequence[float]] = {}

    def embed_once(texts: Sequence[str]) -> list[Sequence[float]]:
        missing = list(dict.fromkeys(text for text in texts if text not in seen))
        if missing:
            seen.update(zip(missing, embed(missing), strict=True))
        return [seen[text] for text in texts]

    return embed_once


def unit_vectors(embed: Embed, texts: Sequence[str]) -> np.ndarray:
    vectors = np.asarray(embed(texts), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = vectors / np.clip(norms, 1e-12, None)
    return unit


def nearest_in_pool(embed: Embed, pool: Mapping[str, str], requests: Sequence[str]) -> dict[str, Neighbour]:
    """Each request's nearest pool prompt (exact search: a matrix product), as a semantic cache would find it."""
    if not pool or not requests:
        return {}
    prompts = list(pool)
    similarities = unit_vectors(embed, requests) @ unit_vectors(embed, prompts).T
    best = similarities.argmax(axis=1)
    return {
        request: Neighbour(prompts[j], pool[prompts[j]], float(similarities[i, j]))
        for i, (request, j) in enumerate(zip(requests, best, strict=True))
    }


def semantic_cache(neighbours: Mapping[str, Neighbour], threshold: float) -> Policy:
    """Reuse the nearest pool answer at or above `threshold`, else ask the strong tier."""

    def choose(prompt: str) -> str:
        near = neighbours.get(prompt)
        return REUSE if near is not None and near.similarity >= threshold else STRONG

    return choose


def cross_fitted_ease(embed: Embed, scored: Mapping[str, Mapping[str, float]], *, seed: int = 7) -> dict[str, float]:
    """Per request, RouteLLM's similarity-weighted share of its k nearest labelled requests on which the
    cheap tier did as well as the strong one, the neighbours drawn from the other `FOLDS` - 1 folds only."""
    prompts = [p for p in scored if STRONG in scored[p] and CHEAP in scored[p]]
    if not prompts:
        return {}
    vectors = unit_vectors(embed, prompts)
    labels = np.asarray([float(scored[p][CHEAP] >= scored[p][STRONG]) for p in prompts], dtype=np.float32)
    folds = np.asarray([int(hashlib.sha256(f"{seed}:{p}".encode()).hexdigest(), 16) % FOLDS for p in prompts])
    predicted = np.zeros(len(prompts), dtype=np.float64)
    for fold in range(FOLDS):
        mine, others = np.where(folds == fold)[0], np.where(folds != fold)[0]
        if len(mine) == 0 or len(others) == 0:
            continue
        similarities = vectors[mine] @ vectors[others].T
        k = min(NEIGHBOURS, len(others))
        nearest = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
        weights = np.clip(np.take_along_axis(similarities, nearest, axis=1), 1e-6, None)
        predicted[mine] = (weights * labels[others][nearest]).sum(axis=1) / weights.sum(axis=1)
    return {prompt: float(value) for prompt, value in zip(prompts, predicted, strict=True)}


def difficulty_router(
    embed: Embed, scored: Mapping[str, Mapping[str, float]], *, strong_share: float, seed: int = 7
) -> Policy:
    """The cheap tier for the requests predicted easiest (`cross_fitted_ease`), the threshold set so that
    `strong_share` of them go to the strong tier (RouteLLM's calibration, on the requests themselves)."""
    ease = cross_fitted_ease(embed, scored, seed=seed)
    # The lowest-ranked `strong_share` go strong; ties broken by a stable hash of the text.
    order = sorted(ease, key=lambda prompt: (ease[prompt], hashlib.sha256(prompt.encode()).hexdigest()))
    strong = set(order[: round(strong_share * len(order))])
    return lambda prompt: STRONG if prompt in strong or prompt not in ease else CHEAP


def oracle_with_reuse(scored: Mapping[str, Mapping[str, float]]) -> Policy:
    """The cheapest choice as good as the strong tier on each request, reuse first (it costs nothing): the
    most any router could offload at strong-only's quality. A ceiling, not a router: it reads the answers."""

    def choose(prompt: str) -> str:
        row = scored[prompt]
        for choice in (REUSE, CHEAP, CHEAP_WITH_EXAMPLES):
            if choice in row and STRONG in row and row[choice] >= row[STRONG]:
                return choice
        return STRONG

    return choose


@dataclass(frozen=True)
class Ceiling:
    """The highest arrival rate a policy's choices allow, as a ratio to strong-only's on the same cores."""

    fixed_split: float  # one cheap + one strong server
    elastic: float  # two slots shared by every tier
    mean_service_s: dict[str, float]  # per tier server: mean busy seconds per request routed to it


def service_times(answers: Sequence[Answer]) -> dict[str, dict[str, float]]:
    """Request prompt -> choice -> its answer's measured latency (reuse costs no server time)."""
    times: dict[str, dict[str, float]] = {}
    for answer in answers:
        if answer.choice in (STRONG, CHEAP, CHEAP_WITH_EXAMPLES):
            times.setdefault(answer.item, {})[answer.choice] = answer.latency_s
    for row in times.values():
        row[REUSE] = 0.0
    return times


def ceiling(
    policy: Policy, times: Mapping[str, Mapping[str, float]], prompts: Sequence[str], *, reuse_s: float = 0.0
) -> Ceiling:
    """Per request the server time its choice takes; the rate at which the busiest resource saturates.

    A reused answer takes no model, only our lookup (`reuse_s`, measured by the caller): it is counted on
    the two shared slots and, in the fixed split, on the strong server's core (the proxy shares the cores).
    """
    usable = [p for p in prompts if STRONG in times.get(p, {})]
    if not usable:
        raise ValueError("no request has the strong tier's answer in the table")
    strong_work = cheap_work = 0.0
    for prompt in usable:
        choice = policy(prompt)
        busy = times[prompt].get(choice, times[prompt][STRONG])  # a choice not in the table: the strong tier's
        if choice == REUSE:
            strong_work += reuse_s
        elif choice == STRONG:
            strong_work += busy
        elif choice in (CHEAP, CHEAP_WITH_EXAMPLES):
            cheap_work += busy
    n = len(usable)
    strong_only = 2 / (statistics.fmean(times[p][STRONG] for p in usable))  # two strong servers
    per_request_strong, per_request_cheap = strong_work / n, cheap_work / n
    bounds = [1 / w for w in (per_request_strong, per_request_cheap) if w > 0]
    fixed = min(bounds) if bounds else float("inf")
    total = per_request_strong + per_request_cheap
    elastic = 2 / total if total > 0 else float("inf")
    return Ceiling(
        fixed_split=fixed / strong_only,
        elastic=elastic / strong_only,
        mean_service_s={"strong": per_request_strong, "cheap": per_request_cheap},
    )


def with_reuse(
    scored: Mapping[str, Mapping[str, float]],
    neighbours: Mapping[str, Neighbour],
    score: Callable[[str, str], float],
) -> dict[str, dict[str, float]]:
    """The table's scores per request and choice, with the reused pool answer scored beside them
    (`score(answer, request prompt)`)."""
    rows = {prompt: dict(row) for prompt, row in scored.items()}
    for prompt, row in rows.items():
        near = neighbours.get(prompt)
        if near is not None:
            row[REUSE] = score(near.answer, prompt)
    return rows


def tokens_by_choice(answers: Sequence[Answer]) -> dict[str, dict[str, int]]:
    """Request prompt -> choice -> the tokens its answer took (prompt and completion; reuse takes none)."""
    tokens: dict[str, dict[str, int]] = {}
    for answer in answers:
        if answer.choice in (STRONG, CHEAP, CHEAP_WITH_EXAMPLES):
            tokens.setdefault(answer.item, {})[answer.choice] = answer.prompt_tokens + answer.completion_tokens
    for row in tokens.values():
        row[REUSE] = 0
    return tokens


def cost_per_request(
    policy: Policy, tokens: Mapping[str, Mapping[str, int]], prompts: Sequence[str], price_per_1k: Mapping[str, float]
) -> float:
    """Mean price of a request under `policy`: its chosen answer's tokens at the price of the tier that
    gave it (`price_per_1k` by choice; examples are paid for as prompt tokens)."""
    spent = [tokens[p].get(policy(p), 0) / 1000 * price_per_1k.get(policy(p), 0.0) for p in prompts if p in tokens]
    return statistics.fmean(spent) if spent else 0.0


def learned_reuse_policies(
    source: TableWorkload, answers: Sequence[Answer], embed: Embed, requests: Sequence[str]
) -> list[tuple[str, Policy]]:
    """The router's reuse choice with the product's shipped weights and bar; on a workload with a reference
    metric also fitted and thresholded on the pool (`table_reuse`), then at fixed bars (a judged workload's
    pool has no verdicts to fit on)."""
    from echolm_lab.bench.table_reuse import (  # built on this module
        ReuseFit,
        fit_on_pool,
        learned_reuse,
        nearest_candidates,
        pool_metric,
    )
    from echolm_middleware.core.reuse import REUSE_MIN_PROBABILITY, REUSE_WEIGHTS

    pooled = pool_answers(source, answers)
    found = nearest_candidates(embed, pooled, requests)
    shipped = ReuseFit(list(REUSE_WEIGHTS), REUSE_MIN_PROBABILITY, 0, 0.0)
    defaults: list[tuple[str, Policy]] = [
        (
            f"reuse with the shipped defaults (P >= {REUSE_MIN_PROBABILITY:g}), else strong",
            learned_reuse(found, shipped)[0],
        )
    ]
    if source.workload.score is None:
        return defaults
    fit = fit_on_pool(embed, pooled, pool_metric(source))
    if fit is None:
        return defaults
    named = [
        *defaults,
        (f"learned reuse, P >= {fit.threshold:g} chosen on the pool, else strong", learned_reuse(found, fit)[0]),
    ]
    for bar in (0.9, 0.8):
        if bar != fit.threshold:
            named.append((f"learned reuse, P >= {bar:g}, else strong", learned_reuse(found, fit, bar)[0]))
    return named


@dataclass(frozen=True)
class PolicyResult:
    score: PolicyScore
    ceiling: Ceiling
    cost_per_request: float  # at the tiers' prices; 0 where none was given


def complete_rows(
    source: TableWorkload, answers: Sequence[Answer], verdicts: Sequence[Verdict] = ()
) -> dict[str, dict[str, float]]:
    """Request prompt -> choice -> quality, for the requests with all three choices scored: by the workload's
    metric, or a judged workload by its `verdicts`."""
    if source.workload.score is None:
        rows = judged_scores(verdicts, source.requests, answers)
    else:
        rows = scores_by_choice(answers, source.workload, source.requests)
    three = {STRONG, CHEAP, CHEAP_WITH_EXAMPLES}
    return {p: dict(row) for p, row in rows.items() if three <= set(row)}


def rivals_at_strong_share(
    source: TableWorkload,
    answers: Sequence[Answer],
    embed: Embed,
    strong_share: float,
    verdicts: Sequence[Verdict] = (),
) -> tuple[dict[str, dict[str, float]], list[tuple[str, Policy]]]:
    """The baselines set to a router's own share of strong calls, so it can be paired with them at the
    throughput that share allows: the difficulty router at that share, and (where every request's reused
    answer can be scored) the semantic cache with its threshold lowered until it reuses for all the rest.
    Returns the scored rows (reuse beside the three choices where it can be scored) and the policies."""
    complete = complete_rows(source, answers, verdicts)
    if not complete:
        return {}, []
    embed = remembering(embed)
    scored: dict[str, dict[str, float]] = complete
    neighbours = nearest_in_pool(embed, pool_answers(source, answers), list(complete))
    metric = source.workload.score
    if metric is not None:
        items = {item.prompt: item for item in source.requests}
        scored = with_reuse(complete, neighbours, lambda answer, prompt: metric(answer, items[prompt]))
    router = difficulty_router(embed, scored, strong_share=strong_share)
    named: list[tuple[str, Policy]] = [(f"difficulty router, strong share {strong_share:.2f}", router)]
    reused = round((1 - strong_share) * len(scored))
    if reused > 0 and all(REUSE in row and p in neighbours for p, row in scored.items()):
        similarity = sorted((neighbours[p].similarity for p in scored), reverse=True)[reused - 1]
        named.append(
            (f"semantic cache at {1 - strong_share:.0%} reuse (threshold {similarity:.3f})",
             semantic_cache(neighbours, similarity))
        )  # fmt: skip
    return scored, named


def evaluate_policies(
    source: TableWorkload,
    answers: Sequence[Answer],
    embed: Embed | None = None,
    reuse_s: float = 0.0,
    price_per_1k: Mapping[str, float] | None = None,
    verdicts: Sequence[Verdict] = (),
) -> list[PolicyResult]:
    """Every policy the tables can score, paired with strong-only over the requests with all three choices
    scored, each with its ceiling and cost: the fixed choices and the oracle; with `embed` also reuse, the
    semantic cache, the difficulty router and the oracle with reuse. A judged workload is scored by its
    `verdicts` (win 1, tie 0.5, loss 0 against the strong tier's answer; strong-only 0.5), its reuse
    policies only where reuse was judged for every request. Empty while no request is complete."""
    metric = source.workload.score
    complete = complete_rows(source, answers, verdicts)
    if not complete:
        return []
    named: list[tuple[str, Policy]] = [
        ("strong-only", fixed(STRONG)),
        ("cheap-only", fixed(CHEAP)),
        ("cheap with examples for all", fixed(CHEAP_WITH_EXAMPLES)),
        ("oracle over the three (a ceiling: reads the answers)", oracle(complete)),
    ]
    scored = complete
    if embed is not None:
        embed = remembering(embed)
        neighbours = nearest_in_pool(embed, pool_answers(source, answers), list(complete))
        if metric is not None:
            items = {item.prompt: item for item in source.requests}
            scored = with_reuse(complete, neighbours, lambda answer, prompt: metric(answer, items[prompt]))
        if all(REUSE in row for row in scored.values()):
            named.insert(3, ("reuse for all (nearest pool answer)", fixed(REUSE)))
            named += [(f"semantic cache {t:g}", semantic_cache(neighbours, t)) for t in SEMANTIC_THRESHOLDS]
        for share in DIFFICULTY_STRONG_SHARES:
            named.append(
                (f"difficulty router, strong share {share:g}", difficulty_router(embed, scored, strong_share=share))
            )
        if all(REUSE in row for row in scored.values()):
            named += learned_reuse_policies(source, answers, embed, list(scored))
            named.append(("oracle with reuse (a ceiling: reads the answers)", oracle_with_reuse(scored)))
    times, tokens, prompts = service_times(answers), tokens_by_choice(answers), list(scored)
    return [
        PolicyResult(
            score_policy(name, policy, scored),
            ceiling(policy, times, prompts, reuse_s=reuse_s),
            cost_per_request(policy, tokens, prompts, price_per_1k or {}),
        )
        for name, policy in named
    ]
