"""The dynamic utility threshold: each tenant's bar lowered band by band where its evidence says examples
below it help, learned from a randomised trial on a share of the requests in the band just below it."""

from __future__ import annotations

import random
from typing import Any

import pytest

from echolm_middleware.config import DynamicThresholdSettings
from echolm_middleware.core.example_threshold import EVIDENCE_TIER, evidence_bucket, p_better, tenant_threshold
from echolm_middleware.core.types import ChatRequest, Outcome
from echolm_middleware.doors.access import EngineHandle, FailOpenCounter, prepare_or_fail_open_sync
from echolm_middleware.explain import format_decision
from echolm_middleware.metrics import metrics
from tests.unit.conftest import RETRIEVAL, ROUTING, ImmediateShadow

DEFAULTS = DynamicThresholdSettings()


def test_p_better_is_a_half_for_equal_evidence_and_near_one_for_a_clear_difference() -> None:
    assert p_better((10, 10), (10, 10)) == pytest.approx(0.5)
    assert p_better((0, 0), (0, 0)) == pytest.approx(0.5)
    assert p_better((20, 10), (3, 27)) > 0.999
    assert p_better((3, 27), (20, 10)) < 0.001


def test_without_evidence_the_bar_is_the_configured_one_and_the_band_below_is_explored() -> None:
    bar = tenant_threshold(0.5, DEFAULTS, {})
    assert bar.bar == 0.5 and bar.passed == ()
    assert bar.explored is not None and (bar.explored.low, bar.explored.high) == (0.3, 0.5)


def test_the_bar_moves_below_a_band_only_with_enough_evidence_that_showing_helps() -> None:
    assert evidence_bucket(0.3, "shown") == "0.30:shown"
    helps = {(EVIDENCE_TIER, "0.30:shown"): (12.0, 18.0), (EVIDENCE_TIER, "0.30:hidden"): (2.0, 28.0)}
    lowered = tenant_threshold(0.5, DEFAULTS, helps)
    assert lowered.bar == 0.3 and [b.low for b in lowered.passed] == [0.3]
    assert lowered.explored is not None and (lowered.explored.low, lowered.explored.high) == (0.1, 0.3)

    # One scored answer short in the shown arm: not yet.
    short = dict(helps)
    short[(EVIDENCE_TIER, "0.30:shown")] = (12.0, 17.0)
    assert tenant_threshold(0.5, DEFAULTS, short).bar == 0.5
    # Showing does no better than hiding (NQ-open's case): the bar stays, however much evidence there is.
    same = {(EVIDENCE_TIER, "0.30:shown"): (3.0, 97.0), (EVIDENCE_TIER, "0.30:hidden"): (3.0, 97.0)}
    assert tenant_threshold(0.5, DEFAULTS, same).bar == 0.5
    # Showing hurts: the bar stays (it is never raised above the configured one).
    hurts = {(EVIDENCE_TIER, "0.30:shown"): (0.0, 40.0), (EVIDENCE_TIER, "0.30:hidden"): (10.0, 30.0)}
    assert tenant_threshold(0.5, DEFAULTS, hurts).bar == 0.5


def test_the_bar_never_goes_below_the_lowest_and_off_means_the_configured_bar_and_no_exploring() -> None:
    helps = {
        (EVIDENCE_TIER, f"{low:.2f}:{arm}"): counts
        for low in (0.3, 0.1)
        for arm, counts in (("shown", (20.0, 20.0)), ("hidden", (1.0, 39.0)))
    }
    lowest = tenant_threshold(0.5, DEFAULTS, helps)
    assert lowest.bar == pytest.approx(0.1) and lowest.explored is None  # 0.1 is DEFAULTS.lowest
    off = tenant_threshold(0.5, DynamicThresholdSettings(enabled=False), helps)
    assert off.bar == 0.5 and off.explored is None and off.passed == ()


def test_a_band_that_never_passed_is_explored_no_more_once_each_arm_holds_max_evidence() -> None:
    settings = DEFAULTS  # the README's defaults
    assert (settings.explore_share, settings.step, settings.lowest, settings.confidence) == (0.1, 0.2, 0.1, 0.95)
    assert (settings.min_evidence, settings.max_evidence) == (30, 300)
    # NQ-open's case: the examples do no better; at 299 scores an arm the band is still tried, at 300 not.
    even = {(EVIDENCE_TIER, "0.30:shown"): (10.0, 289.0), (EVIDENCE_TIER, "0.30:hidden"): (10.0, 290.0)}
    assert tenant_threshold(0.5, DEFAULTS, even).explored is not None
    even[(EVIDENCE_TIER, "0.30:shown")] = (10.0, 290.0)
    tried = tenant_threshold(0.5, DEFAULTS, even)
    assert tried.bar == 0.5 and tried.explored is None
    with pytest.raises(ValueError, match="max_evidence"):
        DynamicThresholdSettings(min_evidence=30, max_evidence=29)
    with pytest.raises(ValueError):
        DynamicThresholdSettings(explore_share=0.6)  # two arms of 0.6 would be more than every request


QUESTION = "What is the capital of France?"
PARAPHRASE = "Which city is the capital of France?"


def _ask(tenant: str = "A", model: str = "strong") -> ChatRequest:
    return ChatRequest(tenant=tenant, model=model, messages=[{"role": "user", "content": PARAPHRASE}])


def _wide_band(**changes: Any) -> Any:
    """A bar of 0.99 with one band below it reaching 0.01: the example (utility well inside) lies in it.
    An explore share of 0.5 puts every request of the band in the trial, half in each arm."""
    dynamic = DynamicThresholdSettings(
        **{"step": 0.98, "lowest": 0.01, "explore_share": 0.5, "min_evidence": 8, **changes}
    )
    return RETRIEVAL.model_copy(update={"threshold": 0.99, "dynamic": dynamic})


def test_a_tenant_with_no_evidence_coming_in_is_never_explored(make_engine: Any) -> None:
    kit = make_engine(retrieval=_wide_band(), rng=random.Random(0))
    kit.engine.admit("A", QUESTION, "Paris.", "strong")
    for _ in range(5):
        decision = kit.engine.prepare(_ask()).decision
        assert (decision.threshold, decision.threshold_arm, decision.examples) == (0.99, "", [])


def test_the_engine_explores_the_band_learns_from_scores_that_showing_helps_and_lowers_the_tenants_bar(
    make_engine: Any,
) -> None:
    kit = make_engine(retrieval=_wide_band(), rng=random.Random(7))
    engine = kit.engine
    for tenant in ("A", "B"):
        engine.admit(tenant, QUESTION, "Paris.", "strong")
        first = engine.prepare(_ask(tenant)).decision
        assert first.threshold_arm == ""  # nothing scored for the tenant yet
        engine.feedback(first.request_id, 1.0, tenant=tenant)  # now scores come in

    arms: dict[str, int] = {"shown": 0, "hidden": 0}
    while min(arms.values()) < 8:
        decision = engine.prepare(_ask("A")).decision
        assert decision.threshold == 0.99 and decision.threshold_band == pytest.approx(0.01)
        arms[decision.threshold_arm] += 1
        # Both arms go to the cheapest tier (the strongest is named and idle), so both are scored alike.
        assert decision.tier == "cheap" and "in the utility threshold's trial" in decision.reason
        assert bool(decision.examples) == (decision.threshold_arm == "shown")
        # The tenant's users: an answer with the example is right, one without it is not.
        engine.feedback(decision.request_id, 1.0 if decision.examples else 0.0, tenant="A")
        if decision.threshold_arm == "shown":
            report = format_decision(kit.state.get(decision.request_id))
            assert "was shown to explore it (the trial sends both arms to the cheapest tier" in report
    kept = kit.state.load_posteriors()
    assert kept[(EVIDENCE_TIER, "0.01:shown|A")][0] == arms["shown"]  # every worker's evidence, in the state
    assert kept[(EVIDENCE_TIER, "0.01:hidden|A")] == (0.0, arms["hidden"])

    engine._posteriors_read_at = float("-inf")  # as the next posterior refresh would re-read them
    lowered = engine.prepare(_ask("A", model="cheap")).decision
    assert lowered.threshold == pytest.approx(0.01) and lowered.threshold_arm == "" and lowered.examples
    assert "utility threshold: 0.01 for this tenant" in format_decision(kit.state.get(lowered.request_id))
    # Tenant B's evidence is its own: its bar has not moved.
    other = engine.prepare(_ask("B")).decision
    assert other.threshold == 0.99


def _explored_count(arm: str) -> float:
    lines = [
        line
        for line in metrics().render().decode().splitlines()
        if line.startswith(f'echolm_threshold_explored_total{{arm="{arm}"}} ')
    ]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def test_every_door_counts_each_explored_request_by_its_arm(make_engine: Any) -> None:
    kit = make_engine(retrieval=_wide_band(), rng=random.Random(3))
    kit.engine.admit("A", QUESTION, "Paris.", "strong")
    handle, counter = EngineHandle(lambda: kit.engine), FailOpenCounter()
    handle.start().result(5)
    first, _ = prepare_or_fail_open_sync(handle, counter, 5.0, _ask())
    assert first is not None and first.decision.threshold_arm == ""
    kit.engine.feedback(first.decision.request_id, 1.0, tenant="A")

    before = {arm: _explored_count(arm) for arm in ("shown", "hidden")}
    arms = []
    for _ in range(12):
        prepared, _ = prepare_or_fail_open_sync(handle, counter, 5.0, _ask())
        assert prepared is not None
        arms.append(prepared.decision.threshold_arm)
    assert set(arms) == {"shown", "hidden"}  # a seeded draw: both arms among twelve
    for arm in ("shown", "hidden"):
        assert _explored_count(arm) == before[arm] + arms.count(arm)


def test_outside_the_trial_a_band_request_is_routed_as_usual_and_inside_it_goes_to_the_cheapest_tier(
    make_engine: Any,
) -> None:
    kit = make_engine(retrieval=_wide_band(explore_share=0.25), rng=random.Random(11))
    engine = kit.engine
    engine.admit("A", QUESTION, "Paris.", "strong")
    engine.feedback(engine.prepare(_ask()).decision.request_id, 1.0, tenant="A")
    decisions = []
    for _ in range(40):
        prepared = engine.prepare(_ask())
        engine.release(prepared.decision.request_id)  # no queue builds (and no answer is kept as an example)
        decisions.append(prepared.decision)
    trial = [d for d in decisions if d.threshold_arm]
    outside = [d for d in decisions if not d.threshold_arm]
    assert 8 <= len(trial) <= 32 and outside  # about half of the band's requests, a seeded draw
    assert all(d.tier == "cheap" for d in trial)
    # Outside the trial nothing below the bar is shown and the router chose: the idle strongest tier.
    assert all(d.threshold_band is None and d.examples == [] and d.tier == "strong" for d in outside)


def test_a_quality_target_compares_every_trial_request_and_only_its_own_sample_moves_the_bias(
    make_engine: Any,
) -> None:
    from echolm_middleware.config import QualityTargetSettings

    shadow = ImmediateShadow(score=0.0)  # every cheap answer disagrees with the strongest's
    routing = ROUTING.model_copy(
        update={"quality_target": QualityTargetSettings(target=0.9, sample_share=1e-9, step=0.1, max_bias=0.5)}
    )
    kit = make_engine(retrieval=_wide_band(), routing=routing, shadow=shadow, rng=random.Random(5))
    engine = kit.engine
    engine.admit("A", QUESTION, "Paris.", "strong")
    arms = []
    for _ in range(10):  # a quality target is a source of scores: the trial runs from the first request
        prepared = engine.prepare(_ask())
        assert prepared.tier == "cheap"
        arms.append(prepared.decision.threshold_arm)
        engine.record(Outcome(prepared.decision.request_id, prepared.tier, "Lyon", "stop"))
    assert set(arms) == {"shown", "hidden"} and len(shadow.seen) == 10
    # Compared outside the quality target's sample: the bias, which follows that sample, stays at rest.
    assert engine.quality.strongest_bias() == 0.0
    kept = kit.state.load_posteriors()
    for arm in ("shown", "hidden"):
        assert kept[(EVIDENCE_TIER, f"0.01:{arm}|A")] == (0.0, arms.count(arm))
