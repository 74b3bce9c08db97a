"""The quality target: the controller's arithmetic and the engine's sampled comparisons (fake shadow)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from echolm_middleware.config import QualityTargetSettings
from echolm_middleware.core.types import ChatRequest, Completion, Message, Outcome
from echolm_middleware.quality_target.controller import QualityTarget
from echolm_middleware.quality_target.shadow import ShadowComparisons, agreement
from tests.unit.conftest import ROUTING, ImmediateShadow

QUESTION = "What is the capital of France?"
PARAPHRASE = "What is the capital city of France?"
ANSWER = "Paris is the capital of France."


def _controller(**overrides: Any) -> QualityTarget:
    values: dict[str, Any] = {"step": 0.1, "max_bias": 0.3, "sample_share": 1.0, "rng": random.Random(0)}
    values.update(overrides)
    return QualityTarget(0.8, **values)


def test_shortfall_raises_the_strongest_tiers_bias_and_slack_lowers_it() -> None:
    target = _controller()
    assert target.observe(0.3) == pytest.approx(0.05)  # 0.1 × (0.8 − 0.3)
    assert target.observe(1.0) == pytest.approx(0.03)  # 0.05 + 0.1 × (0.8 − 1.0)
    state = target.state()
    assert state.comparisons == 2 and state.recent_score == pytest.approx(0.335)


def test_the_bias_stays_within_its_bound() -> None:
    target = _controller()
    for _ in range(50):
        target.observe(0.0)
    assert target.bias == pytest.approx(0.3)
    for _ in range(100):
        target.observe(1.0)
    assert target.bias == pytest.approx(-0.3)


def test_the_sampled_share_is_about_what_was_asked() -> None:
    target = _controller(sample_share=0.1, rng=random.Random(42))
    sampled = sum(target.should_compare() for _ in range(10_000))
    assert 900 < sampled < 1100


def test_scores_outside_zero_to_one_are_refused() -> None:
    with pytest.raises(ValueError):
        _controller().observe(1.5)


def _routing(target: float = 0.9) -> Any:
    return ROUTING.model_copy(
        update={"quality_target": QualityTargetSettings(target=target, sample_share=1.0, step=0.1, max_bias=0.5)}
    )


def _serve(kit: Any, text: str) -> tuple[str, Any]:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    prepared = kit.engine.prepare(ChatRequest(tenant="A", model="strong", messages=messages))
    kit.engine.record(Outcome(prepared.decision.request_id, prepared.tier, "Paris", "stop"))
    return prepared.tier, prepared


def test_a_sampled_cheap_answer_is_compared_on_the_original_request(make_engine: Any) -> None:
    shadow = ImmediateShadow(score=1.0)
    kit = make_engine(routing=_routing(), shadow=shadow)
    kit.engine.admit("A", QUESTION, ANSWER, "strong", instructions="Be brief.")

    tier, _ = _serve(kit, PARAPHRASE)

    assert tier == "cheap"
    [(messages, cheap_answer)] = shadow.seen
    # The strongest tier is asked the request as the user sent it: no examples prepended.
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PARAPHRASE}]
    assert cheap_answer == "Paris"
    assert kit.engine.quality.strongest_bias() == pytest.approx(-0.01)  # 0.1 × (0.9 − 1.0)


def test_cheap_answers_below_the_target_move_traffic_to_the_strongest_tier(make_engine: Any) -> None:
    shadow = ImmediateShadow(score=0.0)
    kit = make_engine(routing=_routing(), shadow=shadow)
    kit.engine.admit("A", QUESTION, ANSWER, "strong", instructions="Be brief.")

    tiers = [_serve(kit, PARAPHRASE)[0] for _ in range(8)]

    # Each failed comparison adds 0.09 to the strongest's score, until it outbids the example-backed cheap tier.
    assert tiers[0] == "cheap" and tiers[-1] == "strong"
    assert tiers.index("strong") == len(shadow.seen)  # compared until the switch, never after
    _, prepared = _serve(kit, PARAPHRASE)
    strongest = next(score for score in prepared.decision.scores if score.tier == "strong")
    assert strongest.target_bias == pytest.approx(kit.engine.quality.strongest_bias())


def test_comparisons_teach_the_router_where_the_cheap_tier_falls_short_even_with_the_bias_at_rest(
    make_engine: Any,
) -> None:
    # A target of 0: comparisons scoring 0 leave the bias at 0, so only the posterior can move the choice.
    shadow = ImmediateShadow(score=0.0)
    kit = make_engine(routing=_routing(target=0.0), shadow=shadow)
    kit.engine.admit("A", QUESTION, ANSWER, "strong", instructions="Be brief.")

    served = [_serve(kit, PARAPHRASE)]
    while served[-1][0] == "cheap" and len(served) < 12:
        served.append(_serve(kit, PARAPHRASE))

    assert served[0][0] == "cheap" and served[-1][0] == "strong"
    assert kit.engine.quality.strongest_bias() == 0.0
    # One failure a comparison, in the cheap tier's posterior of the bucket each request was in (the failed
    # uses also lower the example's utility, so the bucket may fall as they add up).
    posteriors = kit.state.load_posteriors()
    failures = sum(f for (tier, _), (_, f) in posteriors.items() if tier == "cheap")
    assert failures == len(shadow.seen) == len(served) - 1
    assert all(s == 0.0 for (tier, _), (s, _) in posteriors.items() if tier == "cheap")
    cheap_first, cheap_last = (
        next(s for s in prepared.decision.scores if s.tier == "cheap") for _, prepared in (served[0], served[-1])
    )
    assert cheap_last.quality < cheap_first.quality


def test_without_a_shadow_there_is_no_target_and_no_bias(make_engine: Any) -> None:
    kit = make_engine(routing=_routing())
    kit.engine.admit("A", QUESTION, ANSWER, "strong", instructions="Be brief.")
    assert kit.engine.quality is None
    _, prepared = _serve(kit, PARAPHRASE)
    assert all(score.target_bias == 0.0 for score in prepared.decision.scores)


class ScriptedCompleter:
    def __init__(self, answers: list[str], fail: bool = False) -> None:
        self.answers = answers
        self.fail = fail
        self.calls: list[list[Message]] = []

    def chat(self, tier: str, messages: Sequence[Message], *, max_tokens: int, temperature: float) -> Completion:
        self.calls.append(list(messages))
        if self.fail:
            raise ConnectionError("tier down")
        return Completion(self.answers.pop(0), "stop", 10)


def test_shadow_agreement_scores_the_cheap_answer_against_the_strongest() -> None:
    completer = ScriptedCompleter(["Paris."])
    shadow = ShadowComparisons(completer, "strong", metric="agreement", max_tokens=32)
    scores: list[float] = []
    assert shadow.submit([{"role": "user", "content": "capital of France?"}], "paris", scores.append)
    assert shadow.wait_idle(5)
    assert scores == [1.0] and agreement("Lyon", "Paris") == 0.0


def test_shadow_judge_asks_the_strongest_for_an_answer_then_a_verdict_in_both_orders() -> None:
    completer = ScriptedCompleter(["Paris is the capital.", "[[A>B]]", "[[A>B]]"])
    shadow = ShadowComparisons(completer, "strong", metric="judge", max_tokens=32)
    scores: list[float] = []
    shadow.submit([{"role": "user", "content": "capital of France?"}], "It is Lyon.", scores.append)
    assert shadow.wait_idle(5)
    assert len(completer.calls) == 3  # the answer, then the judge in both orders
    assert scores == [0.5]  # A>B in both orders: position bias, a tie


def test_a_failed_comparison_is_counted_and_a_full_queue_drops_samples() -> None:
    shadow = ShadowComparisons(
        ScriptedCompleter([], fail=True), "strong", metric="agreement", max_tokens=8, max_pending=0
    )
    assert shadow.submit([{"role": "user", "content": "q"}], "a", lambda score: None) is False
    assert shadow.dropped == 1

    failing = ShadowComparisons(ScriptedCompleter([], fail=True), "strong", metric="agreement", max_tokens=8)
    scores: list[float] = []
    assert failing.submit([{"role": "user", "content": "q"}], "a", scores.append)
    assert failing.wait_idle(5)
    assert failing.failed == 1 and scores == []


@pytest.mark.parametrize("score", [0.0, 1.0])
def test_a_comparisons_score_is_evidence_for_the_examples_and_the_cheap_tiers_posterior(
    make_engine: Any, score: float
) -> None:
    kit = make_engine(routing=_routing(), shadow=ImmediateShadow(score=score))
    kit.engine.admit("A", QUESTION, ANSWER, "strong", instructions="Be brief.")

    tier, prepared = _serve(kit, PARAPHRASE)

    assert tier == "cheap" and prepared.decision.examples
    (example,) = kit.store.examples("A")
    # One judged use, scored by the comparison, as the caller's own feedback would count it ...
    assert (example.uses, example.offload_successes, example.value) == (1, pytest.approx(score), pytest.approx(score))
    # ... and for the router: the cheap tier's posterior in the request's context bucket, kept in the state ...
    key = ("cheap", f"{prepared.decision.bucket}|A")
    assert kit.state.load_posteriors() == {key: (pytest.approx(score), pytest.approx(1.0 - score))}
    # ... without taking the caller's own feedback away: a second piece of evidence.
    kit.engine.feedback(prepared.decision.request_id, 1.0, tenant="A")
    assert kit.state.load_posteriors() == {key: (pytest.approx(score + 1.0), pytest.approx(1.0 - score))}
