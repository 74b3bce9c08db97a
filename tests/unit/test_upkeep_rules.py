"""The pure upkeep rules: gain and value accounting, replay planning, miss clustering, knapsack eviction."""

from __future__ import annotations

import itertools
import random

import pytest

from echolm_middleware.core.types import Example
from echolm_middleware.core.upkeep_rules import (
    HOUR_S,
    Miss,
    after_cheap_use,
    after_feedback,
    after_passed_over,
    cluster_misses,
    decayed_value,
    knapsack_keep,
    plan_eviction,
    plan_replay,
    stored_bytes,
)

NOW = 1_700_000_000.0
DAY = 86400.0


def _example(id_: str = "e", **fields: object) -> Example:
    values: dict[str, object] = {"id": id_, "prompt": f"prompt {id_}", "answer": f"answer {id_}"}
    values |= {"source_tier": "strong", "quality": 0.8, "created_at": NOW - 10 * DAY}
    values.update(fields)
    return Example(**values)  # type: ignore[arg-type]


# ---- accounting -----------------------------------------------------------------------------------


def test_value_decays_by_a_tenth_per_hour() -> None:
    example = _example(value=10.0, value_at=NOW)
    assert decayed_value(example, NOW) == 10.0
    assert decayed_value(example, NOW + HOUR_S) == pytest.approx(9.0)
    assert decayed_value(example, NOW + 2 * HOUR_S) == pytest.approx(8.1)
    assert decayed_value(example, NOW - HOUR_S) == 10.0  # a clock step backwards never inflates it


def test_a_cheap_use_is_selected_but_neither_a_judged_use_nor_value() -> None:
    used = after_cheap_use(_example(), quality=1.0, served_cost=0.05, alpha=0.2)
    assert (used.selected, used.uses, used.offload_successes, used.value) == (1, 0, 0.0, 0.0)
    assert used.gain == 0.0


def test_gain_is_a_moving_average_of_shortfall_times_cost() -> None:
    example = after_cheap_use(_example(), quality=0.0, served_cost=0.5, alpha=0.2)
    assert example.gain == pytest.approx(0.5)  # the first use sets it
    example = after_cheap_use(example, quality=1.0, served_cost=0.5, alpha=0.2)
    assert example.gain == pytest.approx(0.4)  # 0.8·0.5 + 0.2·0
    example = after_passed_over(example, quality=0.8, served_cost=1.0, now=NOW, alpha=0.2)
    assert example.gain == pytest.approx(0.8 * 0.4 + 0.2 * 0.2)
    assert example.selected == 3


def test_feedback_is_the_evidence_behind_the_offload_record_and_the_value() -> None:
    first = after_cheap_use(_example(), quality=0.9, served_cost=0.5, alpha=0.2)
    used = after_cheap_use(first, quality=0.9, served_cost=0.5, alpha=0.2)
    judged = after_feedback(used, score=0.25, assumed_quality=0.9, served_cost=0.5, now=NOW, alpha=0.2)
    assert (judged.uses, judged.offload_successes, judged.value, judged.value_at) == (1, 0.25, 0.25, NOW)
    # As if the second use had been scored 0.25 instead of the expected 0.9.
    assert judged.gain == pytest.approx(0.8 * (0.1 * 0.5) + 0.2 * (0.75 * 0.5))
    floor = after_feedback(_example(), score=0.0, assumed_quality=1.0, served_cost=1.0, now=NOW, alpha=0.2)
    assert (floor.uses, floor.offload_successes, floor.value) == (1, 0.0, 0.0)
    assert floor.gain == pytest.approx(0.2)  # scored 0 where 1 was expected: it needs the big model more


# ---- replay ---------------------------------------------------------------------------------------


def _plan(examples: list[Example], budget: float, **overrides: object) -> list[str]:
    settings: dict[str, object] = {
        "expected_cost": lambda e: 1.0,
        "reserve": lambda e: 1.0,
        "saving_per_use": lambda e: 1.0,
        "budget": budget,
        "now": NOW,
        "horizon_days": 7.0,
        "max_replays": 5,
    }
    settings.update(overrides)
    return [c.example.id for c in plan_replay(examples, **settings)]  # type: ignore[arg-type]


def test_replay_goes_in_gain_order_within_the_budget() -> None:
    examples = [_example(str(g), gain=g / 10, selected=20) for g in range(1, 10)]
    assert _plan(examples, budget=3.0) == ["9", "8", "7"]


def test_replay_skips_what_does_not_fit_and_takes_a_cheaper_one_below() -> None:
    examples = [_example("big", gain=0.9, selected=50, answer="x" * 900), _example("small", gain=0.5, selected=50)]
    planned = _plan(examples, budget=2.0, reserve=lambda e: 3.0 if e.id == "big" else 1.0)
    assert planned == ["small"]


def test_replay_stops_at_the_first_example_that_would_not_pay_back() -> None:
    # 10 selections over 10 days = 1 a day; over 7 days G·7 must reach the cost of 1: G ≥ 1/7.
    examples = [_example("pays", gain=0.2, selected=10), _example("no", gain=0.1, selected=10), _example("z")]
    assert _plan(examples, budget=100.0) == ["pays"]


def test_examples_replayed_five_times_are_skipped() -> None:
    examples = [_example("done", gain=0.9, selected=50, replays=5), _example("next", gain=0.5, selected=50)]
    assert _plan(examples, budget=10.0) == ["next"]


# ---- coverage -------------------------------------------------------------------------------------


def test_misses_cluster_around_leaders_largest_first() -> None:
    a, a2, b = [1.0, 0.0], [0.95, 0.05], [0.0, 1.0]
    misses = [Miss("b", b), Miss("a", a), Miss("a again", a2)]
    clusters = cluster_misses(misses, min_similarity=0.9)
    assert [[m.query for m in c] for c in clusters] == [["a", "a again"], ["b"]]


# ---- eviction -------------------------------------------------------------------------------------


def _brute_force(items: list[tuple[str, int, float]], capacity: int) -> float:
    best = 0.0
    for r in range(len(items) + 1):
        for subset in itertools.combinations(items, r):
            if sum(w for _, w, _ in subset) <= capacity:
                best = max(best, sum(v for _, _, v in subset))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_knapsack_matches_brute_force_on_small_sets(seed: int) -> None:
    rng = random.Random(seed)
    items = [(f"i{n}", rng.randint(1, 40), round(rng.uniform(0, 10), 2)) for n in range(rng.randint(1, 10))]
    capacity = rng.randint(1, 120)

    kept = knapsack_keep(items, capacity)

    assert sum(w for i, w, _ in items if i in kept) <= capacity
    assert sum(v for i, _, v in items if i in kept) == pytest.approx(_brute_force(items, capacity))


def test_knapsack_prefers_two_light_valuable_items_over_one_heavy_one() -> None:
    items = [("heavy", 10, 10.0), ("a", 5, 6.0), ("b", 5, 6.0)]
    assert knapsack_keep(items, 10) == {"a", "b"}


def test_knapsack_on_a_large_byte_budget_still_fits() -> None:
    rng = random.Random(3)
    items = [(str(n), rng.randint(1500, 6000), rng.uniform(0, 5)) for n in range(3000)]
    kept = knapsack_keep(items, 2_000_000)
    assert sum(w for i, w, _ in items if i in kept) <= 2_000_000
    assert len(kept) > 300


def test_eviction_drops_expired_entries_then_the_least_valuable() -> None:
    examples = [
        _example("old", created_at=NOW - 40 * DAY, value=100.0, value_at=NOW),
        _example("valuable", value=5.0, value_at=NOW),
        _example("useful", value=1.0, value_at=NOW),
        _example("idle", value=0.0),
    ]
    plan = plan_eviction(examples, now=NOW, ttl_days=30, max_entries=2, max_bytes=None)
    assert plan.expired == ["old"]
    assert plan.over_budget == ["idle"]


def test_eviction_under_a_byte_budget_keeps_the_most_value_per_the_knapsack() -> None:
    examples = [
        _example("long", answer="x" * 4000, value=3.0, value_at=NOW),
        _example("short1", value=2.0, value_at=NOW),
        _example("short2", value=2.0, value_at=NOW),
    ]
    budget = stored_bytes(examples[1]) + stored_bytes(examples[2]) + 10
    plan = plan_eviction(examples, now=NOW, ttl_days=None, max_entries=None, max_bytes=budget)
    assert plan.over_budget == ["long"]
    assert plan.expired == []


def test_the_budget_holds_back_upper_bounds_while_payback_uses_expected_costs() -> None:
    # Expected cost 1 pays back; each reserves 4 of the budget of 10: two fit, the third does not.
    examples = [_example(str(n), gain=0.5, selected=10) for n in range(3)]
    assert len(_plan(examples, budget=10.0, reserve=lambda e: 4.0)) == 2
