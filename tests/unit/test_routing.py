"""Tier choice: priors by context bucket, the cost and load terms, Thompson draws, the load tracker."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pytest

from echolm_middleware.config import RoutingSettings
from echolm_middleware.core.routing import (
    NO_EXAMPLES,
    STRONGEST_BUCKET,
    LoadTracker,
    TierProfile,
    choose_tier,
    context_bucket,
    prior_mean,
    score_tiers,
)
from echolm_middleware.core.types import Candidate, Example, ScoredExample, TierScore

CHEAP = TierProfile(name="cheap", rank=0, cost=0.05, capacity=2.0, quality_prior=0.3, max_input_tokens=2048)
STRONG = TierProfile(name="strong", rank=1, cost=1.0, capacity=1.0, quality_prior=0.8, max_input_tokens=2048)


class FakeClock(Protocol):
    """The `clock` fixture: a settable time source."""

    def __call__(self) -> float: ...

    def advance(self, seconds: float) -> None: ...


MID = TierProfile(name="mid", rank=1, cost=0.2, capacity=2.0, quality_prior=0.7, max_input_tokens=2048)
STRONG3 = TierProfile(name="strong", rank=2, cost=1.0, capacity=1.0, quality_prior=0.8, max_input_tokens=2048)


# Pinned so the expected choices below do not move when the defaults are tuned.
ROUTING = RoutingSettings(
    policy="mean",
    cost_weight=0.1,
    load_lambda=0.5,
    load_gamma=1.0,
    prior_strength=10.0,
    example_uplift=0.9,
    load_signal="queue",
    max_load_penalty=10.0,  # uncapped: the cap has its own test
)


def _scored(utility: float) -> ScoredExample:
    example = Example(id="e", prompt="p", answer="a", source_tier="strong", quality=0.8, created_at=0.0)
    return ScoredExample(Candidate(example, 0.9), utility, {})


def _scores(
    tiers: Sequence[TierProfile] = (CHEAP, STRONG),
    *,
    bucket: str = NO_EXAMPLES,
    loads: Mapping[str, float] | None = None,
    observed: Mapping[tuple[str, str], tuple[float, float]] | None = None,
    settings: RoutingSettings | None = None,
    rng: random.Random | None = None,
) -> list[TierScore]:
    return score_tiers(
        tiers,
        strongest=tiers[-1].name,
        bucket=bucket,
        observed=observed or {},
        loads=loads or {},
        settings=settings or ROUTING,
        rng=rng or random.Random(0),
    )


def _chosen(tiers: Sequence[TierProfile] = (CHEAP, STRONG), **kwargs: object) -> str:
    return choose_tier(_scores(tiers, **kwargs)).tier  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("utilities", "bucket"),
    [
        ([], NO_EXAMPLES),
        ([0.3], "low"),
        ([0.69, 0.5], "low"),
        ([0.7], "mid"),
        ([0.6, 0.84], "mid"),
        ([0.85], "high"),
        ([0.5, 0.99, 0.7], "high"),
    ],
)
def test_the_context_bucket_follows_the_best_example(utilities: list[float], bucket: str) -> None:
    assert context_bucket([_scored(u) for u in utilities]) == bucket


def test_examples_raise_a_cheap_tiers_prior_more_the_better_the_bucket_but_not_the_strongest_tiers() -> None:
    means = [prior_mean(CHEAP, b, strongest=False, uplift=0.9) for b in (NO_EXAMPLES, "low", "mid", "high")]

    assert means[0] == CHEAP.quality_prior
    assert means == sorted(means)
    assert len(set(means)) == 4
    assert means[-1] < 1.0
    assert prior_mean(STRONG, "high", strongest=True, uplift=0.9) == STRONG.quality_prior
    assert prior_mean(CHEAP, STRONGEST_BUCKET, strongest=False, uplift=0.9) == CHEAP.quality_prior


@pytest.mark.parametrize(
    ("bucket", "tier"),
    [(NO_EXAMPLES, "strong"), ("low", "strong"), ("mid", "cheap"), ("high", "cheap")],
)
def test_without_load_the_bucket_decides_between_cheap_and_strong(bucket: str, tier: str) -> None:
    assert _chosen(bucket=bucket) == tier


def test_scores_carry_their_terms_and_add_up() -> None:
    scores = {s.tier: s for s in _scores(loads={"strong": 3.0, "cheap": 1.0})}

    strong = scores["strong"]
    assert strong.alpha == pytest.approx(8.0) and strong.beta == pytest.approx(2.0)
    assert strong.quality == pytest.approx(0.8)
    assert strong.cost_penalty == pytest.approx(0.1)
    assert strong.load == 3.0 and strong.capacity == 1.0
    assert strong.load_penalty == pytest.approx(0.5 * math.tanh(2.0) * 1.0)
    assert strong.score == pytest.approx(strong.quality - strong.cost_penalty - strong.load_penalty)
    assert scores["cheap"].load_penalty == 0.0  # below its capacity of 2


def test_load_above_capacity_on_the_strong_tier_shifts_the_choice_to_cheap() -> None:
    assert _chosen(loads={"strong": 5.0}) == "cheap"


@pytest.mark.parametrize("load", [0.0, 0.5, 1.0])
def test_load_at_or_below_capacity_does_not_shift_the_choice(load: float) -> None:
    scores = {s.tier: s for s in _scores(loads={"strong": load})}

    assert scores["strong"].load_penalty == 0.0
    assert choose_tier(list(scores.values())).tier == "strong"


def test_the_load_bias_grows_with_the_excess_load() -> None:
    penalties = [
        next(s for s in _scores(loads={"strong": load}) if s.tier == "strong").load_penalty
        for load in (1.0, 1.2, 1.5, 2.0, 4.0)
    ]

    assert penalties[0] == 0.0
    assert penalties == sorted(penalties)
    assert len(set(penalties)) == len(penalties)
    assert penalties[-1] < ROUTING.load_lambda  # bounded by λ0·C


def test_a_free_tier_pays_no_load_bias() -> None:
    free = TierProfile(name="free", rank=0, cost=0.0, capacity=1.0, quality_prior=0.3, max_input_tokens=10)

    score = _scores((free, STRONG), loads={"free": 10.0})[0]

    assert score.load_penalty == 0.0


def test_three_tiers_no_examples_and_no_load_go_to_the_strongest() -> None:
    assert _chosen((CHEAP, MID, STRONG3)) == "strong"


def test_three_tiers_an_overloaded_strongest_shifts_to_the_middle_tier() -> None:
    assert _chosen((CHEAP, MID, STRONG3), loads={"strong": 5.0}) == "mid"


def test_three_tiers_good_examples_favour_a_cheaper_tier() -> None:
    assert _chosen((CHEAP, MID, STRONG3), bucket="high") == "mid"


def test_three_tiers_every_cheaper_tier_overloaded_leaves_the_cheapest() -> None:
    assert _chosen((CHEAP, MID, STRONG3), bucket="high", loads={"mid": 50.0, "strong": 50.0}) == "cheap"


def test_observed_failures_lower_a_tiers_estimate_until_it_loses() -> None:
    assert _chosen(bucket="high") == "cheap"

    assert _chosen(bucket="high", observed={("cheap", "high"): (0.0, 20.0)}) == "strong"
    # Observations in another bucket do not count for this one.
    assert _chosen(bucket="high", observed={("cheap", "mid"): (0.0, 20.0)}) == "cheap"


def test_the_strongest_tier_reads_its_single_any_bucket_posterior() -> None:
    scores = _scores(bucket="high", observed={("strong", STRONGEST_BUCKET): (10.0, 0.0)})

    strong = next(s for s in scores if s.tier == "strong")
    assert strong.alpha == pytest.approx(8.0 + 10.0)


def test_a_tie_goes_to_the_cheaper_tier() -> None:
    def score(tier: str, cost: float) -> TierScore:
        return TierScore(tier, 0.5, 1, 1, cost, 0.0, 1.0, 0.0, 0.0, score=0.5)

    assert choose_tier([score("strong", 1.0), score("cheap", 0.1)]).tier == "cheap"
    assert choose_tier([score("cheap", 0.1), score("strong", 1.0)]).tier == "cheap"


def test_thompson_draws_are_reproducible_with_a_seeded_random() -> None:
    settings = ROUTING.model_copy(update={"policy": "thompson"})

    first = _scores(bucket="mid", settings=settings, rng=random.Random(42))
    again = _scores(bucket="mid", settings=settings, rng=random.Random(42))
    other = _scores(bucket="mid", settings=settings, rng=random.Random(43))

    assert first == again
    assert [s.quality for s in first] != [s.quality for s in other]
    means = [s.alpha / (s.alpha + s.beta) for s in first]
    assert [s.quality for s in first] != pytest.approx(means)  # a draw, not the mean
    assert all(0.0 < s.quality < 1.0 for s in first)


def test_thompson_draws_concentrate_around_the_posterior_mean() -> None:
    settings = ROUTING.model_copy(update={"policy": "thompson"})
    rng = random.Random(1)

    draws = [_scores(settings=settings, rng=rng)[1].quality for _ in range(2000)]

    assert sum(draws) / len(draws) == pytest.approx(0.8, abs=0.02)


# ---- load tracker -----------------------------------------------------------------------------


def test_load_ema_rises_with_in_flight_requests_and_decays_to_zero_when_idle(clock: FakeClock) -> None:
    tracker = LoadTracker(window_s=2.0, clock=clock)

    for n in range(3):
        tracker.begin("strong", f"r{n}")
    assert tracker.in_flight() == {"strong": 3}
    assert tracker.loads()["strong"] == pytest.approx(0.0)

    clock.advance(2.0)
    after_one_window = tracker.loads()["strong"]
    assert after_one_window == pytest.approx(3 * (1 - math.exp(-1)))

    clock.advance(8.0)
    busy = tracker.loads()["strong"]
    assert after_one_window < busy < 3.0
    assert busy == pytest.approx(3.0, abs=0.03)

    for n in range(3):
        tracker.finish(f"r{n}")
    assert tracker.in_flight() == {"strong": 0}

    clock.advance(2.0)
    decaying = tracker.loads()["strong"]
    assert decaying == pytest.approx(busy * math.exp(-1))
    clock.advance(30.0)
    assert tracker.loads()["strong"] == pytest.approx(0.0, abs=1e-5)


def test_load_is_tracked_per_tier_and_finish_never_goes_negative(clock: FakeClock) -> None:
    tracker = LoadTracker(window_s=1.0, clock=clock)

    tracker.begin("cheap", "c1")
    tracker.begin("strong", "s1")
    tracker.finish("s1")
    tracker.finish("s1")
    tracker.finish("never-begun")
    clock.advance(5.0)

    assert tracker.in_flight() == {"cheap": 1, "strong": 0}
    loads = tracker.loads()
    assert loads["cheap"] == pytest.approx(1.0, abs=0.01)
    assert loads["strong"] == 0.0


def test_a_request_whose_end_is_never_reported_stops_counting_as_load(clock: FakeClock) -> None:
    tracker = LoadTracker(window_s=1.0, stale_after_s=60.0, clock=clock)
    tracker.begin("strong", "vanished")
    clock.advance(30.0)
    assert tracker.in_flight() == {"strong": 1}
    assert tracker.loads()["strong"] == pytest.approx(1.0, abs=0.01)

    clock.advance(31.0)
    assert tracker.loads()["strong"] < 0.5
    assert tracker.in_flight() == {"strong": 0}
    clock.advance(20.0)
    assert tracker.loads()["strong"] == pytest.approx(0.0, abs=1e-6)


def test_reading_loads_twice_at_the_same_time_gives_the_same_value(clock: FakeClock) -> None:
    tracker = LoadTracker(window_s=2.0, clock=clock)
    tracker.begin("strong", "r1")
    clock.advance(1.0)

    assert tracker.loads() == tracker.loads()


def test_the_queue_signal_counts_the_request_being_routed_on_every_tier(clock: FakeClock) -> None:
    tracker = LoadTracker(window_s=2.0, clock=clock)
    tracker.begin("strong", "r1")
    tracker.begin("strong", "r2")
    tracker.begin("cheap", "r3")
    tracker.finish("r3")

    assert tracker.queue_if_added(["cheap", "strong", "mid"]) == {"cheap": 1.0, "strong": 3.0, "mid": 1.0}


DELAY = ROUTING.model_copy(update={"load_signal": "delay", "latency_target_s": 5.0})


def _charged(delays: dict[str, Any], target_s: float = 5.0) -> dict[str, float]:
    return {name: delay.charged(target_s) for name, delay in delays.items()}


def test_with_the_delay_signal_an_idle_cheap_tier_draws_work_from_a_queued_strong_one() -> None:
    from echolm_middleware.core.routing import expected_delays
    from echolm_middleware.core.service_time import ServiceTimes

    service = ServiceTimes(prior_s=1.0)
    service.observe("strong", 0.8)
    service.observe("cheap", 0.5)
    idle = expected_delays([CHEAP, STRONG], {"cheap": 1.0, "strong": 1.0}, service)
    queued = expected_delays([CHEAP, STRONG], {"cheap": 1.0, "strong": 8.0}, service)  # 7 ahead on strong

    # An idle tier: its own answer, whatever its slots (two slots do not halve one answer's time).
    assert {name: delay.total_s for name, delay in idle.items()} == pytest.approx({"cheap": 0.5, "strong": 0.8})
    assert queued["strong"].wait_s == pytest.approx(7 * 0.8 / STRONG.capacity)
    assert queued["strong"].total_s == pytest.approx(7 * 0.8 / STRONG.capacity + 0.8)
    # Answers within the 5 s target cost nothing; the wait is charged in full.
    assert _charged(idle) == {"cheap": 0.0, "strong": 0.0}
    assert _charged(queued)["strong"] == pytest.approx(7 * 0.8)
    # Mid bucket: both idle, quality decides (the cheap tier with examples, as without load).
    assert _chosen(bucket="mid", loads=_charged(idle), settings=DELAY) == "cheap"
    # No example (prior 0.3 vs 0.8): the strong tier while idle, the cheap one once the strong queue costs more.
    assert _chosen(bucket=NO_EXAMPLES, loads=_charged(idle), settings=DELAY) == "strong"
    assert _chosen(bucket=NO_EXAMPLES, loads=_charged(queued), settings=DELAY) == "cheap"


def test_with_the_delay_signal_a_slow_idle_strong_tier_keeps_the_requests_its_quality_earns() -> None:
    from echolm_middleware.core.routing import expected_delays
    from echolm_middleware.core.service_time import ServiceTimes

    service = ServiceTimes(prior_s=1.0)
    service.observe("strong", 8.0)
    service.observe("cheap", 1.0)
    idle = expected_delays([CHEAP, STRONG], {"cheap": 1.0, "strong": 1.0}, service)
    whole_answers = {name: delay.total_s for name, delay in idle.items()}

    # Charged its whole 8 s answer against the cheap tier's 1 s, the idle strong tier would lose a request
    # without examples (0.8 - 0.8 < 0.3 - 0.1); charged only the 3 s beyond the target, it keeps it.
    assert _chosen(bucket=NO_EXAMPLES, loads=whole_answers, settings=DELAY) == "cheap"
    assert _charged(idle) == pytest.approx({"cheap": 0.0, "strong": 3.0})
    assert _chosen(bucket=NO_EXAMPLES, loads=_charged(idle), settings=DELAY) == "strong"


def test_with_the_delay_signal_examples_that_slow_the_cheap_tier_past_the_target_keep_work_off_it() -> None:
    from echolm_middleware.core.routing import expected_delays
    from echolm_middleware.core.service_time import ServiceTimes

    service = ServiceTimes(prior_s=1.0, alpha=0.2)
    for _ in range(30):  # the cheap tier read 30-token prompts in 0.5 s and 100-token ones in 1.7 s
        service.observe("cheap", 0.5, prompt_tokens=30)
        service.observe("cheap", 1.7, prompt_tokens=100)
        service.observe("strong", 0.9, prompt_tokens=30)
    bare = expected_delays([CHEAP, STRONG], {"cheap": 1.0, "strong": 1.0}, service, {"cheap": 30, "strong": 30})
    shown = expected_delays([CHEAP, STRONG], {"cheap": 1.0, "strong": 1.0}, service, {"cheap": 100, "strong": 30})

    assert bare["cheap"].answer_s < 0.8 < 1.5 < shown["cheap"].answer_s  # the examples' 70 tokens cost a second
    assert shown["strong"].answer_s == bare["strong"].answer_s == pytest.approx(0.9)
    # With a 1 s target (load_lambda 2 per second beyond it), an idle cheap tier draws a bare request, but
    # one whose examples take it past the target stays on the idle strong tier, though the examples'
    # quality alone (mid bucket) would send it to the cheap tier.
    tight = DELAY.model_copy(update={"load_lambda": 2.0, "latency_target_s": 1.0})
    assert _chosen(bucket="mid", loads=_charged(bare, 1.0), settings=tight) == "cheap"
    assert _chosen(bucket="mid", loads=_charged(shown, 1.0), settings=tight) == "strong"


def test_with_the_delay_signal_a_queued_cheap_tier_sheds_work_back_to_the_strong_one() -> None:
    # The queue signal can never push work off a cheap tier (its bias is scaled by its cost, 0.05).
    loads = {"cheap": 12.0, "strong": 0.8}

    assert _chosen(bucket="high", loads={"cheap": 8.0, "strong": 1.0}) == "cheap"  # queue: stays cheap
    assert _chosen(bucket="high", loads=loads, settings=DELAY) == "strong"


def test_the_load_charge_is_capped_so_a_long_queue_sheds_only_requests_with_a_small_predicted_loss() -> None:
    capped = DELAY.model_copy(update={"max_load_penalty": 0.4})
    queued = {"cheap": 0.0, "strong": 40.0}  # seconds of wait: 4.0 of quality at 0.5 per 5 s, uncapped

    # Uncapped, the queue sheds even a request no example helps (prior 0.3 against 0.8) ...
    assert _chosen(bucket=NO_EXAMPLES, loads=queued, settings=DELAY) == "cheap"
    # ... capped at 0.4, that request's predicted loss (0.5) is more than load may cost: it stays strong.
    (cheap, strong) = _scores(bucket=NO_EXAMPLES, loads=queued, settings=capped)
    assert strong.load_penalty == pytest.approx(0.4) and strong.load_penalty_capped
    assert not cheap.load_penalty_capped
    assert choose_tier([cheap, strong]).tier == "strong"
    # A request whose examples leave a small predicted loss (low bucket: 0.68 against 0.8) is still shed.
    assert _chosen(bucket="low", loads=queued, settings=capped) == "cheap"
    # Below the cap nothing changes: a 3 s wait costs 0.3 either way.
    strong_after_3_s = _scores(loads={"strong": 3.0}, settings=capped)[1]
    assert strong_after_3_s.load_penalty == pytest.approx(0.3) and not strong_after_3_s.load_penalty_capped


def test_latency_is_learned_per_tier_and_ignores_nonsense() -> None:
    from echolm_middleware.core.service_time import ServiceTimes

    service = ServiceTimes(prior_s=1.0, alpha=0.5)
    service.observe("strong", 2.0)
    service.observe("strong", 4.0)
    service.observe("strong", float("nan"))
    service.observe("strong", -1.0)

    assert service.estimate("strong") == pytest.approx(3.0)
    assert service.estimate("cheap") == service.predict("cheap", 500) == 1.0  # the prior until timed
    assert service.predict("strong", 500) == pytest.approx(3.0)  # no prompt of known length timed yet
