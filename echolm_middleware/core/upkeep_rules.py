"""Pure rules of the cache's upkeep: gain and value accounting, replay order, coverage clusters, eviction.

Nothing here does I/O; `echolm_middleware.upkeep` runs these rules against the store and the tiers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from echolm_middleware.core.types import Example, Vector

HOUR_S = 3600.0
VALUE_DECAY_PER_HOUR = 0.9
# Bytes a stored vector takes (float32 all-MiniLM-L6-v2) beside the texts: part of an entry's weight.
VECTOR_BYTES = 384 * 4


# ---- accounting on every use ----------------------------------------------------------------------


def decayed_value(example: Example, now: float) -> float:
    """Successful offloads the example enabled, decayed ×0.9 for every hour since it was last updated."""
    if example.value_at <= 0.0 or now <= example.value_at:
        return example.value
    decay: float = VALUE_DECAY_PER_HOUR ** ((now - example.value_at) / HOUR_S)
    return example.value * decay


def _moving_average(previous: float, sample: float, alpha: float, first: bool) -> float:
    return sample if first else (1.0 - alpha) * previous + alpha * sample


def _first_step(example: Example) -> bool:
    """No use has moved the gain yet: its moving average starts at the first sample."""
    return example.selected == 0 and example.gain == 0.0


def after_cheap_use(example: Example, *, quality: float, served_cost: float, alpha: float) -> Example:
    """A cheaper tier answered with this example in its prompt.

    That a request was served says nothing of how well: the offload record (`uses`, `offload_successes`)
    and the eviction value move only with evidence (`after_feedback`). `quality` is the expected quality
    of that answer (the router's estimate; 0 for an answer that was not whole) and moves the replay gain
    by (1 − quality) × the serving tier's cost.
    """
    return replace(
        example,
        selected=example.selected + 1,
        gain=_moving_average(example.gain, (1.0 - quality) * served_cost, alpha, _first_step(example)),
    )


def after_passed_over(example: Example, *, quality: float, served_cost: float, now: float, alpha: float) -> Example:
    """The example was selected, yet the request still went to a dearer tier: only its gain moves."""
    return replace(
        example,
        selected=example.selected + 1,
        gain=_moving_average(example.gain, (1.0 - quality) * served_cost, alpha, _first_step(example)),
    )


def after_feedback(
    example: Example, *, score: float, assumed_quality: float, served_cost: float, now: float, alpha: float
) -> Example:
    """Evidence: a cheaper tier's answer with this example in its prompt was scored `score` (0-1).

    It counts as one judged use with `score` successes, and adds `score` to the eviction value. The
    gain's last moving-average step assumed `assumed_quality`; it is corrected by the difference, exactly
    when no other use came in between and approximately otherwise.
    """
    return replace(
        example,
        uses=example.uses + 1,
        offload_successes=example.offload_successes + score,
        gain=max(0.0, example.gain - alpha * (score - assumed_quality) * served_cost),
        value=decayed_value(example, now) + score,
        value_at=now,
    )


# ---- replay ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayCandidate:
    example: Example
    expected_saving: float  # what the replay should save over the horizon, in the budget's unit
    expected_cost: float  # what replaying it should cost
    reserved: float  # the most it can cost: what the budget holds back for it


def selections_per_day(example: Example, now: float) -> float:
    """How often the example is selected, over its life so far (at least one day, so new ones are not inflated)."""
    age_days = max(1.0, (now - example.created_at) / 86400.0)
    return example.selected / age_days


def plan_replay(
    examples: Sequence[Example],
    *,
    expected_cost: Callable[[Example], float],
    reserve: Callable[[Example], float],
    saving_per_use: Callable[[Example], float],
    budget: float,
    now: float,
    horizon_days: float,
    max_replays: int,
) -> list[ReplayCandidate]:
    """Examples to replay, highest G first, within `budget`; stop at the first that would not pay back.

    A replay pays back when what it should save over the horizon (G × selections per day × horizon ×
    what one request on the strongest tier costs) is at least what it should cost. The budget holds
    back each replay's upper bound (`reserve`), so the pass cannot overspend.
    """
    eligible = [e for e in examples if e.replays < max_replays and e.gain > 0.0]
    eligible.sort(key=lambda e: (e.gain, e.selected), reverse=True)
    plan: list[ReplayCandidate] = []
    held = 0.0
    for example in eligible:
        cost, upper = expected_cost(example), reserve(example)
        saving = example.gain * selections_per_day(example, now) * horizon_days * saving_per_use(example)
        if saving < cost:
            break  # G order: no later example pays back better per selection than this one
        if held + upper > budget:
            continue  # a cheaper one further down may still fit
        plan.append(ReplayCandidate(example, saving, cost, upper))
        held += upper
    return plan


# ---- coverage -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Miss:
    """A recent request that found no useful example."""

    query: str
    vector: Vector
    instructions: str = ""


def _cosine(a: Vector, b: Vector) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norms if norms else 0.0


def cluster_misses(misses: Sequence[Miss], *, min_similarity: float) -> list[list[Miss]]:
    """Greedy leader clustering: each miss joins the first cluster whose leader is close enough.

    Largest clusters first; each cluster's first member (its leader) is its representative.
    """
    clusters: list[list[Miss]] = []
    for miss in misses:
        for cluster in clusters:
            if _cosine(cluster[0].vector, miss.vector) >= min_similarity:
                cluster.append(miss)
                break
        else:
            clusters.append([miss])
    clusters.sort(key=len, reverse=True)
    return clusters


# ---- eviction -------------------------------------------------------------------------------------


def stored_bytes(example: Example) -> int:
    """What an entry weighs in the store: its texts in UTF-8 and its vector."""
    return (
        len(example.prompt.encode()) + len(example.answer.encode()) + len(example.instructions.encode()) + VECTOR_BYTES
    )


def knapsack_keep(
    items: Sequence[tuple[str, int, float]], capacity: int, *, resolution: int = 2000, max_cells: int = 5_000_000
) -> set[str]:
    """0/1 knapsack: the ids of (id, weight, value) items in the most valuable set that fits `capacity`.

    Exact by dynamic programming over weights scaled to at most `resolution` units (rounded up, so the
    kept set always fits). Equal weights (an entry budget) reduce to keeping the most valuable ones.
    Past `max_cells` table cells, greedy by value per unit of weight: with many items, each small
    against the budget, it falls short of the optimum by less than one item's value.
    """
    if capacity <= 0 or not items:
        return set()
    if sum(weight for _, weight, _ in items) <= capacity:
        return {item_id for item_id, _, _ in items}
    if len({weight for _, weight, _ in items}) == 1:
        fits = capacity // items[0][1]
        return {item_id for item_id, _, _ in sorted(items, key=lambda item: item[2], reverse=True)[:fits]}
    scale = max(1.0, capacity / resolution)
    slots = int(capacity / scale)
    if len(items) * (slots + 1) > max_cells:
        return _greedy_by_density(items, capacity)
    weights = [max(1, math.ceil(weight / scale)) for _, weight, _ in items]
    best = [0.0] * (slots + 1)
    took = [bytearray(slots + 1) for _ in items]
    for index, (weight, (_, _, value)) in enumerate(zip(weights, items, strict=True)):
        for room in range(slots, weight - 1, -1):
            candidate = best[room - weight] + value
            if candidate > best[room]:
                best[room] = candidate
                took[index][room] = 1
    kept: set[str] = set()
    room = slots
    for index in range(len(items) - 1, -1, -1):
        if took[index][room]:
            kept.add(items[index][0])
            room -= weights[index]
    return kept


def _greedy_by_density(items: Sequence[tuple[str, int, float]], capacity: int) -> set[str]:
    kept: set[str] = set()
    room = capacity
    for item_id, weight, _ in sorted(items, key=lambda item: item[2] / max(1, item[1]), reverse=True):
        if weight <= room:
            kept.add(item_id)
            room -= weight
    return kept


@dataclass(frozen=True)
class EvictionPlan:
    expired: list[str]
    over_budget: list[str]

    @property
    def ids(self) -> list[str]:
        return self.expired + self.over_budget


def plan_eviction(
    examples: Sequence[Example],
    *,
    now: float,
    ttl_days: float | None,
    max_entries: int | None,
    max_bytes: int | None,
) -> EvictionPlan:
    """Entries past their TTL, then what a knapsack over the rest leaves out under each budget."""
    ttl_s = None if ttl_days is None else ttl_days * 86400.0
    expired = [e.id for e in examples if ttl_s is not None and now - e.created_at > ttl_s]
    alive = [e for e in examples if e.id not in set(expired)]
    keep = {e.id for e in alive}
    # Ties in value go to the newer entry: the tiny bonus is below any real offload's worth.
    items = [(e.id, stored_bytes(e), decayed_value(e, now) + e.created_at * 1e-12) for e in alive]
    if max_entries is not None:
        keep &= knapsack_keep([(i, 1, v) for i, _, v in items], max_entries)
    if max_bytes is not None:
        keep &= knapsack_keep([item for item in items if item[0] in keep], max_bytes)
    return EvictionPlan(expired=expired, over_budget=[e.id for e in alive if e.id not in keep])
