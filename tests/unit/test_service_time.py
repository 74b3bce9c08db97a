"""Each tier's service time, learned from its answers (`core.service_time`): its mean, its cost per prompt
token, and the prediction for a request of a given length."""

from __future__ import annotations

import pytest

from echolm_middleware.core.service_time import ServiceTimes


def _timed(service: ServiceTimes, tier: str, pairs: list[tuple[int, float]], rounds: int = 40) -> None:
    for _ in range(rounds):
        for tokens, seconds in pairs:
            service.observe(tier, seconds, prompt_tokens=tokens)


def test_the_cost_of_a_prompt_token_is_learned_from_prompts_of_different_lengths() -> None:
    service = ServiceTimes(prior_s=1.0, alpha=0.05)
    # 20 ms a token above a 0.3 s answer: 50 tokens 1.3 s, 100 tokens 2.3 s.
    _timed(service, "cheap", [(50, 1.3), (100, 2.3)])

    assert service.seconds_per_token("cheap") == pytest.approx(0.02, rel=0.15)  # shrunk a little by the ridge
    assert service.predict("cheap", 100) > service.predict("cheap", 75) > service.predict("cheap", 50)
    assert service.predict("cheap", 100) == pytest.approx(2.3, rel=0.1)
    assert service.predict("cheap", 50) == pytest.approx(1.3, rel=0.15)


def test_prompts_all_alike_leave_the_prediction_at_the_mean_latency() -> None:
    service = ServiceTimes(prior_s=1.0, alpha=0.1)
    _timed(service, "strong", [(460, 0.9), (461, 1.1)])  # a shared system prompt: one token apart, noise

    assert service.seconds_per_token("strong") < 0.01
    assert service.predict("strong", 530) == pytest.approx(service.estimate("strong"), abs=0.05)


def test_a_prediction_never_falls_below_a_quarter_of_the_mean_nor_learns_a_negative_cost() -> None:
    service = ServiceTimes(prior_s=1.0, alpha=0.05)
    _timed(service, "cheap", [(200, 1.0), (300, 3.0)])
    assert service.predict("cheap", 0) == pytest.approx(0.25 * service.estimate("cheap"))

    faster_when_longer = ServiceTimes(prior_s=1.0, alpha=0.05)
    _timed(faster_when_longer, "cheap", [(50, 2.0), (100, 1.0)])  # shorter answers, say: not a rule
    assert faster_when_longer.seconds_per_token("cheap") == 0.0
    assert faster_when_longer.predict("cheap", 500) == pytest.approx(faster_when_longer.estimate("cheap"))


def test_answers_of_unknown_length_still_move_the_mean_but_not_the_cost_per_token() -> None:
    service = ServiceTimes(prior_s=1.0, alpha=0.5)
    service.observe("strong", 2.0)  # a fallback: the prompt the serving tier read is unknown
    service.observe("strong", 4.0)

    assert service.estimate("strong") == pytest.approx(3.0)
    assert service.seconds_per_token("strong") == 0.0
    service.observe("strong", 3.0, prompt_tokens=80)  # the first known length starts the token mean there
    assert service.predict("strong", 80) == pytest.approx(3.0)
