"""The decision in LiteLLM's own records: its StandardLoggingPayload (spend logs, UI, logging callbacks).

Through the proxy hook and the Router door over a real `litellm.Router` whose strong tier is an EchoTier
(real HTTP); a LiteLLM CustomLogger reads what LiteLLM itself logged. The real `litellm --config` proxy
does the same in tests/integration/test_reuse_proxy.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import litellm
import pytest
from litellm.integrations.custom_logger import CustomLogger

from echolm_middleware.doors.access import EngineHandle
from echolm_middleware.doors.litellm_proxy import EchoLMProxyHandler
from echolm_middleware.doors.litellm_router import install_echolm
from tests.echo_tier import EchoTier
from tests.unit.test_proxy_handler import _router_to

QUESTION = "What is the capital of France?"
PARAPHRASE = "What is the capital city of France?"  # similarity 0.93 under the word-hash embedder


class Payloads(CustomLogger):
    """Each StandardLoggingPayload LiteLLM logs for a successful call, by the call's user message."""

    def __init__(self) -> None:
        super().__init__()
        self.by_question: dict[str, dict[str, Any]] = {}

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        payload = kwargs.get("standard_logging_object") or {}
        messages = payload.get("messages") or []
        question = str(messages[-1].get("content")) if messages else ""
        self.by_question[question[-len(PARAPHRASE) :]] = payload


@pytest.fixture
def strong() -> Iterator[EchoTier]:
    with EchoTier("strong") as tier:
        yield tier


def _unregister(*callbacks: Any) -> None:
    for registered in (litellm.callbacks, litellm._async_success_callback, litellm._async_failure_callback):
        registered[:] = [callback for callback in registered if all(callback is not ours for ours in callbacks)]


async def _until(condition: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True])
def test_the_proxy_hooks_decision_lands_in_litellms_logging_payload(
    make_engine: Any, strong: EchoTier, stream: bool
) -> None:
    kit = make_engine()
    handler = EchoLMProxyHandler(handle=EngineHandle(lambda: kit.engine))
    handler.handle.start().result()
    payloads = Payloads()
    litellm.callbacks.extend([handler, payloads])
    router = _router_to(strong)
    # A caller's own spend-log metadata stays beside ours; an "echolm" entry of theirs is replaced.
    metadata = {"spend_logs_metadata": {"project": "atlas", "echolm": {"tier": "forged"}}}
    data: dict[str, Any] = {
        "model": "strong",
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": stream,
        "metadata": metadata,
    }

    async def run() -> None:
        await handler.async_pre_call_hook(SimpleNamespace(team_id="A"), None, data, "acompletion")
        response = await router.acompletion(**data)
        if stream:
            async for _ in handler.async_post_call_streaming_iterator_hook(None, response, data):
                pass
        await _until(lambda: QUESTION in payloads.by_question)

    try:
        asyncio.run(run())
    finally:
        _unregister(handler, payloads)

    logged = payloads.by_question[QUESTION]["metadata"]["spend_logs_metadata"]
    assert logged["project"] == "atlas"
    decision = logged["echolm"]
    assert decision["requested_model"] == "strong" and decision["tier"] == "strong"
    assert decision["action"] == "route" and decision["examples"] == 0 and decision["request_id"]
    assert "tenant" not in decision  # the caller's view: key owners can read their spend logs


def test_the_router_doors_decision_lands_in_litellms_logging_payload(make_engine: Any, strong: EchoTier) -> None:
    kit = make_engine()
    router = _router_to(strong)
    door = install_echolm(router, engine=kit.engine)
    payloads = Payloads()
    litellm.callbacks.append(payloads)
    metadata = {"echolm_tenant": "acme"}

    async def run() -> None:
        await router.acompletion(model="strong", messages=[{"role": "user", "content": QUESTION}], metadata=metadata)
        await _until(lambda: QUESTION in payloads.by_question)

    try:
        asyncio.run(run())
    finally:
        _unregister(payloads, door.callback)

    decision = payloads.by_question[QUESTION]["metadata"]["spend_logs_metadata"]["echolm"]
    assert decision["requested_model"] == "strong" and decision["tier"] == "strong" and decision["action"] == "route"


def test_the_router_doors_sync_path_routes_and_records_like_the_async_one(make_engine: Any) -> None:
    from echolm_middleware.doors.litellm_router import install_echolm

    with EchoTier("cheap") as cheap, EchoTier("strong") as strong:
        kit = make_engine()
        kit.engine.admit("acme", QUESTION, "Paris is the capital of France.", "strong")
        router = litellm.Router(
            model_list=[
                {"model_name": tier.name, "litellm_params": {"model": f"openai/{tier.name}", "api_base": tier.api_base,
                                                             "api_key": "x"}}
                for tier in (cheap, strong)
            ],
            num_retries=0,
        )  # fmt: skip
        door = install_echolm(router, kit.engine)
        try:
            response = router.completion(
                model="strong", messages=[{"role": "user", "content": PARAPHRASE}], metadata={"echolm_tenant": "acme"}
            )
            decision = next(d for d in kit.state.recent(0.0) if d.query == PARAPHRASE)
            deadline = time.monotonic() + 20
            while kit.state.recorded_by(decision.request_id) is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            _unregister(door.callback)

    assert str(response.choices[0].message.content).startswith("cheap:")  # routed to the cheap tier
    assert "Paris is the capital of France." in str(cheap.bodies[-1]["messages"])  # with the example
    assert strong.bodies == []
    assert kit.state.recorded_by(decision.request_id) == "cheap"  # recorded from LiteLLM's sync success event


def test_a_saving_is_the_strongest_tiers_price_less_what_litellm_charged() -> None:
    from echolm_middleware.core.routing import TierProfile, TokenPrices
    from echolm_middleware.core.summary import DecisionSummary
    from echolm_middleware.doors.litellm_common import saving_of

    def tier(name: str, rank: int, prices: TokenPrices) -> TierProfile:
        return TierProfile(name, rank, 0.0, 1.0, 0.5, 2048, prices)

    strong_prices = TokenPrices(input_per_1k=2.0, output_per_1k=6.0)  # USD per 1k tokens
    engine = SimpleNamespace(tiers=[tier("cheap", 0, TokenPrices(0.1, 0.3)), tier("strong", 1, strong_prices)])
    routed = DecisionSummary(request_id="r", action="route", tier="cheap", examples=2, example_tokens=300)
    response = SimpleNamespace(usage=SimpleNamespace(prompt_tokens=500, completion_tokens=100))
    # The strongest tier would have read the prompt without our 300 example tokens.
    would_cost = (2.0 * 200 + 6.0 * 100) / 1000

    assert saving_of(engine, routed, "cheap", response, 0.08) == pytest.approx(would_cost - 0.08)  # LiteLLM's cost
    reused = DecisionSummary(request_id="r", action="reuse", tier="echolm-cache")
    assert saving_of(engine, reused, "echolm-cache", response, 0.0) == pytest.approx((2.0 * 500 + 6.0 * 100) / 1000)
    # echolm's own price for a tier overrides what LiteLLM logged for it.
    engine.tiers[0] = tier("cheap", 0, TokenPrices(0.1, 0.1, overridden=True))
    assert saving_of(engine, routed, "cheap", response, 0.08) == pytest.approx(
        would_cost - (0.1 * 500 + 0.1 * 100) / 1000
    )
