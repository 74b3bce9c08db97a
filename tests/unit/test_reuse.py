"""The reuse choice: a cached answer served as it is where the offload model says it is as good."""

from __future__ import annotations

from typing import Any

import pytest

from echolm_middleware.config import ReuseSettings
from echolm_middleware.core.offload_model import FEATURES
from echolm_middleware.core.reuse import why_not_reused
from echolm_middleware.core.routing import LoadTracker
from echolm_middleware.core.types import ChatRequest, Outcome
from echolm_middleware.errors import FeedbackAlreadyGiven, UnknownRequest
from echolm_middleware.explain import format_decision
from tests.unit.conftest import RETRIEVAL, ROUTING

QUESTION = "What is the capital of France?"
PARAPHRASE = "What is the capital city of France?"  # similarity 0.93 under the word-hash embedder
UNRELATED = "How many legs does a spider have?"
ANSWER = "Paris is the capital of France."

# P(as good) rises with the nearest similarity alone: 0.79 at the paraphrase's 0.926, about 0 far away.
CLOSE_IS_GOOD = [-20.0, 23.0] + [0.0] * (len(FEATURES) - 2)


def _routing(**reuse: Any) -> Any:
    settings = {"enabled": True, "weights": CLOSE_IS_GOOD, "min_probability": 0.5, **reuse}
    return ROUTING.model_copy(update={"reuse": ReuseSettings(**settings)})


def _ask(text: str, *, tenant: str = "A", system: str = "", **extra: Any) -> ChatRequest:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return ChatRequest(tenant=tenant, model="strong", messages=messages, **extra)


def test_a_close_paraphrase_is_answered_from_the_cache_without_any_tier(make_engine: Any) -> None:
    kit = make_engine(routing=_routing())
    kit.engine.admit("A", QUESTION, ANSWER, "strong")

    prepared = kit.engine.prepare(_ask(PARAPHRASE))

    assert prepared.reused and not prepared.routed
    assert prepared.reused_answer == ANSWER
    assert prepared.reused_usage == (len(PARAPHRASE.split()), len(ANSWER.split()))
    decision = prepared.decision
    assert decision.action == "reuse"
    assert decision.tier == "strong"  # logged under the model named: no reuse.model_group configured
    assert decision.reuse_probability == pytest.approx(0.79, abs=0.02)
    assert decision.reused_example and decision.examples == []
    assert kit.engine.load.in_flight() == {}  # no tier works on it
    assert kit.engine.explain(decision.request_id).action == "reuse"  # kept for `echolm explain`
    shown = format_decision(decision)
    probability = f"{decision.reuse_probability:.2f}"
    assert "(reuse)" in shown and f"P(nearest cached answer as good as the strongest's) {probability}" in shown


def test_the_model_group_a_reused_answer_is_logged_under_is_the_configured_one(make_engine: Any) -> None:
    kit = make_engine(routing=_routing(model_group="echolm-cache"))
    kit.engine.admit("A", QUESTION, ANSWER, "strong")

    prepared = kit.engine.prepare(_ask(PARAPHRASE))

    assert prepared.reused and prepared.tier == "echolm-cache"


@pytest.mark.parametrize(
    ("allowed", "reused"),
    [
        ((("strong",),), False),  # a key limited to strong is served by strong, not by the cache's group
        ((("strong", "echolm-cache"),), True),
        ((("*",),), True),
        ((), True),  # no list: no limit
    ],
)
def test_the_cache_serves_only_keys_whose_allow_lists_admit_its_group(
    make_engine: Any, allowed: tuple[tuple[str, ...], ...], reused: bool
) -> None:
    kit = make_engine(routing=_routing(model_group="echolm-cache"))
    kit.engine.admit("A", QUESTION, ANSWER, "strong")

    prepared = kit.engine.prepare(_ask(PARAPHRASE, allowed_models=allowed))

    assert prepared.reused is reused
    if not reused:
        assert prepared.tier == "strong"


def test_below_the_threshold_the_request_is_routed_and_the_estimate_is_kept(make_engine: Any) -> None:
    kit = make_engine(routing=_routing(min_probability=0.9))
    kit.engine.admit("A", QUESTION, ANSWER, "strong")

    prepared = kit.engine.prepare(_ask(PARAPHRASE))

    assert prepared.routed and prepared.reused_answer is None
    assert prepared.decision.reuse_probability == pytest.approx(0.79, abs=0.02)
    assert len(prepared.decision.reuse_features) == len(FEATURES)


def test_reuse_is_off_where_configured_so(make_engine: Any) -> None:
    kit = make_engine(routing=_routing(enabled=False))
    kit.engine.admit("A", QUESTION, ANSWER, "strong")

    prepared = kit.engine.prepare(_ask(PARAPHRASE))

    assert prepared.routed and prepared.decision.reuse_probability is None


def test_an_unrelated_request_is_not_served_a_cached_answer(make_engine: Any) -> None:
    kit = make_engine(routing=_routing())
    kit.engine.admit("A", QUESTION, ANSWER, "strong")

    prepared = kit.engine.prepare(_ask(UNRELATED))

    assert prepared.routed
    assert prepared.decision.reuse_probability is not None and prepared.decision.reuse_probability < 0.01


def test_another_context_or_tenant_never_gets_the_answer(make_engine: Any) -> None:
    kit = make_engine(routing=_routing())
    kit.engine.admit("A", QUESTION, ANSWER, "strong")

    other_tenant = kit.engine.prepare(_ask(PARAPHRASE, tenant="B"))
    other_context = kit.engine.prepare(_ask(PARAPHRASE, system="Answer in French."))

    assert not other_tenant.reused and not other_context.reused


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"stop": ["\n"]}, "stop shapes the answer"),
        ({"max_tokens": 3}, "longer than max_tokens=3"),
        ({"max_completion_tokens": 2}, "longer than max_completion_tokens=2"),
    ],
)
def test_parameters_a_cached_answer_cannot_honour_keep_it_out(
    make_engine: Any, params: dict[str, Any], reason: str
) -> None:
    kit = make_engine(routing=_routing())
    kit.engine.admit("A", QUESTION, ANSWER, "strong")

    prepared = kit.engine.prepare(_ask(PARAPHRASE, params=params))

    assert prepared.routed and not prepared.reused
    assert reason in why_not_reused(params, prepared.decision.not_cached, ANSWER, len(ANSWER.split()))


def test_a_long_enough_limit_allows_reuse(make_engine: Any) -> None:
    kit = make_engine(routing=_routing())
    kit.engine.admit("A", QUESTION, ANSWER, "strong")

    assert kit.engine.prepare(_ask(PARAPHRASE, params={"max_tokens": 100})).reused


def test_recording_a_reused_answer_counts_its_example_once_and_admits_nothing(make_engine: Any) -> None:
    kit = make_engine(routing=_routing())
    kit.engine.admit("A", QUESTION, ANSWER, "strong")
    prepared = kit.engine.prepare(_ask(PARAPHRASE))
    outcome = Outcome(prepared.decision.request_id, prepared.tier, ANSWER, finish_reason="stop")

    assert kit.engine.record(outcome) == "reuse_counted"
    assert kit.engine.record(outcome) == "duplicate"

    vector = kit.embedder.embed(["anything"])[0]
    held = [c.example for c in kit.store.nearest("A", vector, 10)]
    assert [(e.prompt, e.selected) for e in held] == [(QUESTION, 1)]  # the paraphrase was not admitted


def test_feedback_on_a_reused_answer_moves_only_that_tenants_reuse_model(make_engine: Any) -> None:
    kit = make_engine(routing=_routing())
    kit.engine.admit("A", QUESTION, ANSWER, "strong")
    prepared = kit.engine.prepare(_ask(PARAPHRASE))
    before = kit.engine.reuse.weights("A")

    kit.engine.feedback(prepared.decision.request_id, 0.0, tenant="A")

    after = kit.engine.reuse.weights("A")
    assert after[1] < before[1]  # a bad reuse at this similarity lowers the similarity's weight
    assert kit.engine.reuse.weights("B") == before
    again = kit.engine.prepare(_ask(PARAPHRASE))
    assert again.decision.reuse_probability is not None
    assert again.decision.reuse_probability < prepared.decision.reuse_probability  # type: ignore[operator]
    with pytest.raises(FeedbackAlreadyGiven):
        kit.engine.feedback(prepared.decision.request_id, 1.0, tenant="A")
    with pytest.raises(UnknownRequest):
        kit.engine.feedback(again.decision.request_id, 1.0, tenant="B")


def test_a_sampled_reused_answer_compared_badly_lowers_reuse_without_moving_the_tier_bias(make_engine: Any) -> None:
    from echolm_middleware.config import QualityTargetSettings
    from tests.unit.test_quality_target import ImmediateShadow

    target = QualityTargetSettings(target=0.9, sample_share=1.0, step=0.1, max_bias=0.5)
    shadow = ImmediateShadow(score=0.0)
    routing = _routing().model_copy(update={"quality_target": target})
    kit = make_engine(routing=routing, shadow=shadow)
    kit.engine.admit("A", QUESTION, ANSWER, "strong")
    first = kit.engine.prepare(_ask(PARAPHRASE))
    assert first.reused

    kit.engine.record(Outcome(first.decision.request_id, first.tier, ANSWER, finish_reason="stop"))

    [(messages, compared)] = shadow.seen
    assert compared == ANSWER and messages[-1]["content"] == PARAPHRASE
    assert kit.engine.quality.strongest_bias() == 0.0  # the tiers' balance is not the cache's to move
    again = kit.engine.prepare(_ask(PARAPHRASE))
    assert again.decision.reuse_probability < first.decision.reuse_probability  # type: ignore[operator]


def test_the_shipped_defaults_are_one_fit_and_its_own_threshold() -> None:
    from echolm_middleware.core.reuse import REUSE_MIN_PROBABILITY, REUSE_WEIGHTS

    assert len(REUSE_WEIGHTS) == len(FEATURES)
    assert ReuseSettings().min_probability == REUSE_MIN_PROBABILITY
    assert ReuseSettings().enabled is True  # on: non-inferior on the three answers tables, README "Reuse"


def test_a_tenants_learned_reuse_weights_survive_a_restart(make_engine: Any) -> None:
    kit = make_engine(routing=_routing())
    kit.engine.admit("A", QUESTION, ANSWER, "strong")
    prepared = kit.engine.prepare(_ask(PARAPHRASE))
    kit.engine.feedback(prepared.decision.request_id, 0.0, tenant="A")
    learned = kit.engine.reuse.weights("A")

    restarted = make_engine(routing=_routing(), state=kit.state)

    assert restarted.engine.reuse.weights("A") == pytest.approx(learned)
    assert restarted.engine.reuse.weights("B") == CLOSE_IS_GOOD
    assert set(restarted.engine.utility_weights("A")) == set(kit.engine.utility_weights("B"))  # not mixed in


def test_an_answer_the_scrubber_changed_is_never_served_as_it_is(make_engine: Any) -> None:
    kit = make_engine(routing=_routing())
    kit.engine.admit("A", QUESTION, "Write to [EMAIL] for the capital of France.", "strong")

    prepared = kit.engine.prepare(_ask(PARAPHRASE))

    assert prepared.routed and not prepared.reused
    assert why_not_reused({}, "", "Write to [EMAIL].", 4) == "the cached answer holds scrubbed personal data"


def test_reuse_weights_of_the_wrong_length_stop_the_engine_at_start(make_engine: Any) -> None:
    from echolm_middleware.errors import ConfigError

    with pytest.raises(ConfigError, match=r"routing\.reuse\.weights: 2 given, the model has 7"):
        make_engine(routing=_routing(weights=[1.0, 2.0]))


def _strong_busy(kit: Any, in_flight: int = 5) -> None:
    """Five requests on the strong tier for ten seconds: load alone sends the next one to the cheap tier."""
    kit.engine.load = LoadTracker(window_s=2.0, clock=kit.clock)
    for n in range(in_flight):
        kit.engine.load.begin("strong", f"busy {n}")
    kit.clock.advance(10.0)


# No candidate clears this utility threshold: the cheap tier would answer without examples (bucket "none").
NO_EXAMPLES = RETRIEVAL.model_copy(update={"threshold": 0.99})


def test_under_load_the_cached_answer_stands_in_for_a_cheaper_tier_it_is_expected_to_beat(make_engine: Any) -> None:
    kit = make_engine(routing=_routing(min_probability=0.9, model_group="echolm-cache"), retrieval=NO_EXAMPLES)
    kit.engine.admit("A", QUESTION, ANSWER, "strong")
    _strong_busy(kit)

    prepared = kit.engine.prepare(_ask(PARAPHRASE))

    assert prepared.reused and prepared.reused_answer == ANSWER and prepared.tier == "echolm-cache"
    decision = prepared.decision
    assert decision.reuse_stands_in_for == "cheap" and decision.examples == []
    assert decision.passed_over == []  # no dearer tier answered: no example was passed over for one
    scores = {score.tier: score.quality for score in decision.scores}  # the router's view is kept
    assert decision.reuse_probability * scores["strong"] >= scores["cheap"]  # type: ignore[operator]  # 0.63 >= 0.30
    assert kit.engine.load.in_flight() == {"strong": 5}  # the cheap tier got no work
    shown = format_decision(decision)
    assert "the router sent it to cheap; the nearest cached answer stands in" in shown
    assert "its expected quality 0.628" in shown and "cheap's 0.300" in shown and "cheap *" in shown


def test_under_load_a_cheaper_tier_with_good_examples_keeps_the_request(make_engine: Any) -> None:
    kit = make_engine(routing=_routing(min_probability=0.9))  # the paraphrase's example puts cheap at 0.88
    kit.engine.admit("A", QUESTION, ANSWER, "strong")
    _strong_busy(kit)

    prepared = kit.engine.prepare(_ask(PARAPHRASE))

    assert prepared.routed and prepared.tier == "cheap" and prepared.decision.examples
    assert prepared.decision.reuse_stands_in_for == ""


def test_the_cached_answer_never_stands_in_for_the_strongest(make_engine: Any) -> None:
    kit = make_engine(routing=_routing(min_probability=0.9), retrieval=NO_EXAMPLES)  # idle: strong wins
    kit.engine.admit("A", QUESTION, ANSWER, "strong")

    prepared = kit.engine.prepare(_ask(PARAPHRASE))

    assert prepared.routed and prepared.tier == "strong" and prepared.decision.reuse_stands_in_for == ""


def test_with_stand_in_off_the_cheaper_tier_answers_what_the_router_sends_it(make_engine: Any) -> None:
    kit = make_engine(routing=_routing(min_probability=0.9, stand_in=False), retrieval=NO_EXAMPLES)
    kit.engine.admit("A", QUESTION, ANSWER, "strong")
    _strong_busy(kit)

    prepared = kit.engine.prepare(_ask(PARAPHRASE))

    assert prepared.routed and prepared.tier == "cheap" and not prepared.reused


def test_a_request_that_may_not_be_reused_gets_no_stand_in(make_engine: Any) -> None:
    kit = make_engine(routing=_routing(min_probability=0.9), retrieval=NO_EXAMPLES)
    kit.engine.admit("A", QUESTION, ANSWER, "strong")
    _strong_busy(kit)

    prepared = kit.engine.prepare(_ask(PARAPHRASE, params={"max_tokens": 2}))  # shorter than the cached answer

    assert prepared.routed and prepared.tier == "cheap"
