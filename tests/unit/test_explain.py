"""The `echolm explain` report: what it says about routed, passed-through and failed-open decisions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from echolm_middleware.core.routing import TierProfile, TokenPrices
from echolm_middleware.core.types import ChatRequest, Decision, ExampleTrace, Outcome, TierScore
from echolm_middleware.explain import format_decision

QUESTION = "What is the capital of France?"
PARAPHRASE = "What is the capital city of France?"


def _ask(text: str, model: str = "strong") -> ChatRequest:
    return ChatRequest(tenant="A", model=model, messages=[{"role": "user", "content": text}])


def _score(
    tier: str, score: float, *, load: float = 0.0, capacity: float = 1.0, load_penalty: float = 0.0
) -> TierScore:
    return TierScore(
        tier=tier,
        quality=score,
        alpha=8.0,
        beta=2.0,
        cost=1.0 if tier == "strong" else 0.05,
        load=load,
        capacity=capacity,
        cost_penalty=0.0,
        load_penalty=load_penalty,
        score=score,
    )


def _decision(**overrides: Any) -> Decision:
    values: dict[str, Any] = {
        "request_id": "r1",
        "tenant": "A",
        "created_at": 1_700_000_000.0,
        "requested_model": "strong",
        "action": "route",
        "reason": "routed",
        "tier": "strong",
        "query": QUESTION,
        "bucket": "none",
        "augmentation": "none",
        "scores": [_score("cheap", 0.295), _score("strong", 0.7)],
        "candidates_considered": 0,
    }
    values.update(overrides)
    return Decision(**values)


def test_a_routed_decision_with_an_example_shows_retrieval_scores_and_why(make_engine: Any) -> None:
    kit = make_engine()
    kit.engine.admit("A", QUESTION, "Paris.", "strong")
    decision = kit.engine.prepare(_ask(PARAPHRASE)).decision

    report = format_decision(kit.engine.explain(decision.request_id))
    lines = report.splitlines()

    assert lines[0] == f"request {decision.request_id}  tenant A  2023-11-14 22:13:20 UTC"
    assert lines[1] == "named model 'strong' -> 'cheap' (route)"
    assert f"query: {PARAPHRASE!r}" in lines
    assert "retrieval: 1 candidates, best similarity 0.926, 1 example(s) kept (inline" in report
    assert f"example 1: similarity 0.926 utility {decision.examples[0].utility:.3f}" in report
    assert repr(QUESTION) in report
    assert "context bucket: high" in lines
    cheap_row = next(line for line in lines if line.strip().startswith("cheap"))
    strong_row = next(line for line in lines if line.strip().startswith("strong"))
    assert cheap_row.strip().startswith("cheap *")
    assert not strong_row.strip().startswith("strong *")
    why = next(line for line in lines if line.startswith("why: "))
    assert why.startswith("why: cheap scored ")
    assert "against strong's" in why
    assert "1 example(s) put the request in context bucket 'high'" in why
    assert lines[-1] == "outcome: not recorded (yet)"


def test_the_outcome_line_names_who_served_a_recorded_request(make_engine: Any) -> None:
    kit = make_engine()
    decision = kit.engine.prepare(_ask(QUESTION)).decision
    kit.engine.record(Outcome(decision.request_id, "strong", "Paris.", "stop"))

    report = format_decision(kit.engine.explain(decision.request_id), kit.state.recorded_by(decision.request_id))

    assert report.splitlines()[-1] == "outcome: recorded, served by strong"
    assert "no example cleared the utility threshold" in report
    assert "best similarity n/a" in report


def test_an_overloaded_runner_up_is_explained() -> None:
    decision = _decision(
        tier="cheap",
        scores=[_score("cheap", 0.295), _score("strong", 0.2, load=5.0, capacity=1.0, load_penalty=0.5)],
    )

    why = format_decision(decision).splitlines()[-2]

    assert why.startswith("why: cheap scored 0.295 against strong's 0.200")
    assert "strong was over capacity (load 5.00 > 1), costing it 0.500" in why


def test_a_runner_up_charged_for_delay_is_explained_in_seconds_against_the_target() -> None:
    strong = replace(
        _score("strong", 0.07, load=6.3, capacity=5.0, load_penalty=0.63), load_signal="delay", expected_s=6.3
    )
    decision = _decision(tier="cheap", scores=[replace(_score("cheap", 0.295), load_signal="delay"), strong])

    lines = format_decision(decision).splitlines()

    assert "strong was charged 6.30 s of delay (the wait behind the requests ahead" in lines[-2]
    assert "beyond the 5 s latency target), costing it 0.630" in lines[-2]
    header = next(line for line in lines if line.split()[:2] == ["tier", "quality"])
    assert "delay/target s" in header and "load/cap" not in header


def test_a_strong_tier_kept_by_the_cap_on_its_load_charge_says_so() -> None:
    strong = replace(
        _score("strong", 0.4, load=40.0, capacity=5.0, load_penalty=0.4), load_signal="delay", load_penalty_capped=True
    )
    decision = _decision(tier="strong", scores=[replace(_score("cheap", 0.295), load_signal="delay"), strong])

    why = format_decision(decision).splitlines()[-2]

    assert why.startswith("why: strong scored 0.400 against cheap's 0.295")
    assert "strong's load charge was capped at 0.400, the most load may cost a tier (routing.max_load_penalty)" in why
    assert Decision.from_dict(decision.to_dict()) == decision  # the flag is kept with the decision


def test_a_single_eligible_tier_is_explained_as_the_only_choice() -> None:
    decision = _decision(requested_model="cheap", tier="cheap", scores=[_score("cheap", 0.3)])

    assert "why: cheap is the only tier no dearer than 'cheap'" in format_decision(decision)


def test_pass_through_and_fail_open_reports_skip_the_routing_detail() -> None:
    for action, reason, expected in [
        ("pass_through", "request offers tools", "why: pass through: request offers tools;"),
        ("fail_open", "store unavailable", "why: fail open: store unavailable;"),
    ]:
        report = format_decision(_decision(action=action, reason=reason, query="", scores=[]))

        assert expected in report
        assert "the request went to the model it named" in report
        assert "tier scores" not in report
        assert "retrieval:" not in report
        assert "query:" not in report


def test_a_decision_survives_the_round_trip_through_its_dict() -> None:
    trace = ExampleTrace(
        id="e1", prompt=QUESTION, similarity=0.93, utility=0.88, features={"similarity": 0.93}, tokens=12
    )
    decision = _decision(tier="cheap", examples=[trace], bucket="high", best_similarity=0.93)

    again = Decision.from_dict(decision.to_dict())

    assert again == decision
    assert format_decision(again) == format_decision(decision)


def test_a_decision_kept_under_the_old_field_name_still_reads() -> None:
    """Decisions written before `chosen_tier` became `tier` stay readable for `echolm explain`."""
    stored = _decision(tier="cheap").to_dict()
    stored["chosen_tier"] = stored.pop("tier")

    assert Decision.from_dict(stored).tier == "cheap"


def test_a_decision_a_newer_version_kept_with_fields_unknown_here_still_reads() -> None:
    """Workers mid-upgrade share one state database: a field added later is left out, not an error."""
    trace = ExampleTrace(id="e1", prompt=QUESTION, similarity=0.93, utility=0.88, features={}, tokens=12)
    stored = _decision(tier="cheap", examples=[trace], bucket="high").to_dict()
    stored["a_later_field"] = 1
    stored["examples"][0]["a_later_field"] = "x"

    again = Decision.from_dict(stored)

    assert (again.tier, again.examples[0].tokens) == ("cheap", 12)


def test_each_choice_shows_its_expected_time_and_prompt_price(make_engine: Any) -> None:
    priced = (
        TierProfile("cheap", 0, 0.05, 1.0, 0.3, 2048, TokenPrices(input_per_1k=0.1, output_per_1k=0.1)),
        TierProfile("strong", 1, 1.0, 1.0, 0.8, 2048, TokenPrices(input_per_1k=2.0, output_per_1k=2.0)),
    )
    kit = make_engine(priced)
    kit.engine.admit("A", QUESTION, "Paris.", "strong")
    kit.engine.service.observe("cheap", 0.5)
    kit.engine.service.observe("strong", 2.0)
    kit.engine.load.begin("strong", "someone else's request")

    decision = kit.engine.prepare(_ask(PARAPHRASE)).decision
    cheap, strong = sorted(decision.scores, key=lambda s: s.tier)

    # Idle cheap: its own 0.5 s; strong: one request ahead of this one, 2 s each on its one slot.
    assert (cheap.expected_s, strong.expected_s) == (0.5, 4.0)
    words = len(PARAPHRASE.split())  # the test tokenizer counts words
    assert decision.example_tokens > 0
    assert cheap.prompt_usd == pytest.approx(0.1 * (words + decision.example_tokens) / 1000)
    assert strong.prompt_usd == pytest.approx(2.0 * words / 1000)  # the strongest gets no examples
    report = format_decision(kit.engine.explain(decision.request_id))
    header = next(line for line in report.splitlines() if "alpha/beta" in line)
    assert header.split()[-4:] == ["time", "s", "prompt", "$"]
    assert "4.00" in next(line for line in report.splitlines() if line.strip().startswith("strong"))
