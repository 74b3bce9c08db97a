"""A tier whose calls fail is left out of routing for a while, tried again, and routed to once it answers."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import litellm
import openai
import pytest

from echolm_middleware.config import RoutingSettings
from echolm_middleware.core.tier_health import TierHealth
from echolm_middleware.core.types import ChatRequest, Outcome
from echolm_middleware.doors.tier_faults import tier_at_fault
from echolm_middleware.explain import format_decision
from tests.unit.conftest import ROUTING, FakeClock

PARAPHRASE = "What is the capital city of France?"


def test_a_failed_tier_is_left_out_then_tried_by_one_request_and_each_failed_try_doubles_its_time_out() -> None:
    clock = FakeClock(0.0)
    health = TierHealth(cooldown_s=5, max_cooldown_s=30, clock=clock)
    assert health.usable(["cheap", "strong"]) == {"cheap", "strong"}

    assert health.failed("cheap") is True
    assert health.usable(["cheap", "strong"]) == {"strong"}
    # The other requests it had in flight fail too: the same outage, no longer out.
    assert health.failed("cheap") is False
    clock.advance(4.9)
    assert health.usable(["cheap", "strong"]) == {"strong"}
    clock.advance(0.1)
    assert health.usable(["cheap", "strong"]) == {"cheap", "strong"}

    health.chosen("cheap")  # this request tries it; the others keep away meanwhile
    assert health.usable(["cheap"]) == set()
    assert health.failed("cheap") is True  # the try failed: out for 10 s
    assert health.left_out() == {"cheap": 10.0}
    for expected in (20.0, 30.0, 30.0):  # doubled on each failed try, up to the longest
        clock.advance(health.left_out()["cheap"])
        health.chosen("cheap")
        assert health.failed("cheap") is True
        assert health.left_out() == {"cheap": expected}

    clock.advance(30)
    health.chosen("cheap")
    assert health.answered("cheap") is True  # it answered: routed to again at once
    assert health.usable(["cheap"]) == {"cheap"} and health.left_out() == {}
    assert health.answered("cheap") is False
    assert health.failed("cheap") is True  # and a new outage starts again at the shortest time out
    assert health.left_out() == {"cheap": 5.0}


def test_by_default_a_tier_is_left_out_for_5_s_doubled_on_each_failed_try_up_to_60_s() -> None:
    # The README's defaults, as the engine builds its TierHealth from a config that names neither setting.
    routing = RoutingSettings()
    clock = FakeClock(0.0)
    health = TierHealth(routing.failing_tier_cooldown_s, routing.failing_tier_max_cooldown_s, clock=clock)
    assert health.failed("cheap") is True
    assert health.left_out() == {"cheap": 5.0}
    for expected in (10.0, 20.0, 40.0, 60.0, 60.0):
        clock.advance(health.left_out()["cheap"])
        health.chosen("cheap")
        assert health.failed("cheap") is True
        assert health.left_out() == {"cheap": expected}


def test_a_cooldown_of_zero_never_leaves_a_tier_out() -> None:
    health = TierHealth(cooldown_s=0, max_cooldown_s=60)
    assert health.failed("cheap") is False
    assert health.usable(["cheap"]) == {"cheap"}


def _ask(text: str, *, model: str = "strong") -> ChatRequest:
    return ChatRequest(tenant="A", model=model, messages=[{"role": "user", "content": text}])


def test_the_engine_routes_around_a_failing_tier_says_so_and_routes_to_it_again_once_it_answers(
    make_engine: Any,
) -> None:
    kit = make_engine(routing=ROUTING.model_copy(update={"failing_tier_cooldown_s": 5.0}))
    clock = FakeClock(0.0)
    kit.engine.health = TierHealth(5.0, 60.0, clock=clock)
    assert kit.engine.admit("A", "What is the capital of France?", "Paris is the capital of France.", "strong")
    assert kit.engine.prepare(_ask(PARAPHRASE)).tier == "cheap"  # with its example, the cheap tier

    kit.engine.tier_failed("cheap")
    around = kit.engine.prepare(_ask(PARAPHRASE))
    assert around.tier == "strong" and around.decision.action == "route"
    assert around.decision.left_out_failing == ["cheap"]
    assert around.decision.reason == "routed; left out after failing: cheap"
    assert around.decision.examples == []  # the strongest tier gets the caller's own messages
    report = format_decision(kit.state.get(around.decision.request_id))
    assert "left out: cheap" in report and "strong is the only tier left: cheap had just failed" in report

    # A request that names the failing tier itself, with no other it may go to, still goes there.
    assert kit.engine.prepare(_ask(PARAPHRASE, model="cheap")).tier == "cheap"

    clock.advance(5.0)
    tried = kit.engine.prepare(_ask(PARAPHRASE))
    assert tried.tier == "cheap" and tried.decision.left_out_failing == []
    assert kit.engine.prepare(_ask(PARAPHRASE)).tier == "strong"  # one request tries it at a time
    kit.engine.record(
        Outcome(request_id=tried.decision.request_id, served_by="cheap", answer="Paris.", finish_reason="stop")
    )
    assert kit.engine.prepare(_ask(PARAPHRASE)).tier == "cheap"


def test_while_the_strong_tier_is_failing_a_request_naming_it_goes_to_the_cheap_tier(make_engine: Any) -> None:
    kit = make_engine()
    unrelated = _ask("How many legs does a spider have?")
    assert kit.engine.prepare(unrelated).tier == "strong"  # no example: the strong tier wins

    kit.engine.tier_failed("strong")

    around = kit.engine.prepare(unrelated)
    assert (around.tier, around.decision.left_out_failing) == ("cheap", ["strong"])
    assert around.messages == unrelated.messages  # nothing to show it: the caller's own messages


def test_a_tier_no_engine_knows_is_ignored(make_engine: Any) -> None:
    kit = make_engine()
    kit.engine.tier_failed("echolm-cache")
    assert kit.engine.health.left_out() == {}


def _status_error(kind: type[Exception], status: int) -> Exception:
    response = httpx.Response(status, request=httpx.Request("POST", "http://tier/v1/chat/completions"))
    return kind("failed", response=response, body=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("error", "at_fault"),
    [
        (litellm.APIConnectionError("refused", llm_provider="openai", model="m"), True),
        (litellm.Timeout("slow", model="m", llm_provider="openai"), True),
        (litellm.ServiceUnavailableError("down", llm_provider="openai", model="m"), True),
        (litellm.InternalServerError("boom", llm_provider="openai", model="m"), True),
        (litellm.RateLimitError("busy", llm_provider="openai", model="m"), True),
        (litellm.AuthenticationError("bad key", llm_provider="openai", model="m"), True),
        (litellm.NotFoundError("no such model", llm_provider="openai", model="m"), True),
        (litellm.BadRequestError("malformed", model="m", llm_provider="openai"), False),
        (litellm.ContextWindowExceededError("too long", model="m", llm_provider="openai"), False),
        (litellm.ContentPolicyViolationError("refused", model="m", llm_provider="openai"), False),
        (openai.APIConnectionError(request=httpx.Request("POST", "http://tier")), True),
        (openai.APITimeoutError(request=httpx.Request("POST", "http://tier")), True),
        (_status_error(openai.InternalServerError, 503), True),
        (_status_error(openai.BadRequestError, 400), False),
        (_status_error(openai.UnprocessableEntityError, 422), False),
        (httpx.ConnectError("refused"), True),
        (ConnectionRefusedError(), True),
        (asyncio.CancelledError(), False),  # the caller hung up
        (ValueError("ours"), False),
        (None, False),
    ],
    ids=lambda value: type(value).__name__,
)
def test_only_errors_that_say_the_tier_is_failing_count_against_it(error: BaseException | None, at_fault: bool) -> None:
    assert tier_at_fault(error) is at_fault
