"""The proxy door's hook over a real `litellm.Router`: fallback when the chosen tier fails, bypass counting.

The cheap tier's deployment points at a port nobody listens on (its server is down); the strong tier
answers with LiteLLM's `mock_response`.
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
from litellm.proxy._types import UserAPIKeyAuth

from echolm_lab.local_services import free_port
from echolm_middleware.core.summary import DecisionSummary
from echolm_middleware.doors.access import EngineHandle
from echolm_middleware.doors.litellm_common import (
    METADATA_KEY,
    as_served,
    bypass_requested,
    fall_back_to_requested,
    summary_in,
)
from echolm_middleware.doors.litellm_proxy import EchoLMProxyHandler, caller_of, tenant_of
from echolm_middleware.metrics import metrics
from tests.echo_tier import WORDS, EchoTier
from tests.unit.conftest import ROUTING

QUESTION = "What is the capital of France?"
PARAPHRASE = "What is the capital city of France?"
# What the strong tier (an EchoTier: real HTTP, a finish reason on its streams) answers.
STRONG_ANSWER = "strong: " + " ".join(f"tok{i}" for i in range(WORDS))


class SentMessages(CustomLogger):
    """The messages of every successful call, by the model group that answered it."""

    def __init__(self) -> None:
        super().__init__()
        self.by_group: dict[str, list[Any]] = {}

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        group = (kwargs.get("litellm_params", {}).get("metadata") or {}).get("model_group")
        self.by_group[str(group)] = kwargs.get("messages")


@pytest.fixture
def router_with_a_dead_cheap_tier() -> Iterator[Any]:
    with EchoTier("strong") as strong:
        yield _router_to(strong)


def _router_to(strong: EchoTier, *more_groups: dict[str, Any]) -> Any:
    """A Router whose cheap tier is down and whose strong tier is `strong`, with `more_groups` beside them."""
    return litellm.Router(
        model_list=[
            {
                "model_name": "cheap",
                "litellm_params": {
                    "model": "openai/cheap",
                    "api_base": f"http://127.0.0.1:{free_port()}/v1",
                    "api_key": "local",
                },
            },
            {
                "model_name": "strong",
                "litellm_params": {"model": "openai/strong", "api_base": strong.api_base, "api_key": "local"},
            },
            *more_groups,
        ],
        num_retries=0,
    )


@pytest.fixture
def installed(make_engine: Any) -> Any:
    kit = make_engine()
    handler = EchoLMProxyHandler(handle=EngineHandle(lambda: kit.engine))
    handler.handle.start().result()
    sent = SentMessages()
    litellm.callbacks.extend([handler, sent])
    yield SimpleNamespace(kit=kit, handler=handler, sent=sent)
    # LiteLLM copies callbacks into lists of its own and keeps one instance per class: take ours out of
    # all of them, or the next test's instances would never be called.
    for registered in (litellm.callbacks, litellm._async_success_callback, litellm._async_failure_callback):
        registered[:] = [callback for callback in registered if callback is not handler and callback is not sent]


def test_our_fallback_entry_comes_before_the_callers_own() -> None:
    data: dict[str, Any] = {"fallbacks": ["gpt-4o"]}

    fall_back_to_requested(data, "cheap", "strong", [{"role": "user", "content": "hi"}])

    assert data["fallbacks"] == [
        {"cheap": [{"model": "strong", "messages": [{"role": "user", "content": "hi"}]}]},
        "gpt-4o",
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_routed_to_a_dead_tier_is_answered_by_the_requested_model_unchanged(
    installed: Any, router_with_a_dead_cheap_tier: Any, stream: bool
) -> None:
    kit, handler, sent = installed.kit, installed.handler, installed.sent
    assert kit.engine.admit("team:A", QUESTION, "Paris is the capital of France.", "strong")
    original = [{"role": "user", "content": PARAPHRASE}]
    data: dict[str, Any] = {"model": "strong", "messages": list(original), "stream": stream}
    left_out_before = _tier_left_out_count("cheap")

    async def run() -> tuple[str, Any]:
        await handler.async_pre_call_hook(SimpleNamespace(team_id="A"), None, data, "acompletion")
        assert data["model"] == "cheap" and data["messages"] != original  # routed, with the example
        response = await router_with_a_dead_cheap_tier.acompletion(**data)
        if stream:  # relayed through the door's stream hook, as the proxy does
            relayed = handler.async_post_call_streaming_iterator_hook(None, response, data)
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in relayed])
        else:
            text = response.choices[0].message.content
        # LiteLLM logs success in the background: wait for the recording (admitting an example).
        deadline = time.monotonic() + 20
        while (
            kit.engine.store.count("team:A") < 2
            or "strong" not in sent.by_group
            or "cheap" not in kit.engine.health.left_out()
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return text, response

    text, response = asyncio.run(run())

    assert text == STRONG_ANSWER
    assert sent.by_group.get("strong") == original  # the caller's request, without our examples
    headers = handler_headers(handler, data, response)
    assert headers["x-echolm-action"] == "fail_open"
    assert headers["x-echolm-tier"] == "strong"
    assert headers["x-echolm-reason"] == "chosen tier cheap failed"
    # Recorded as the strong tier's answer (admitted as an example), and counted as our failure once.
    assert kit.engine.store.count("team:A") == 2
    assert handler.fail_open.counts["chosen tier failed: cheap"] == 1
    # LiteLLM's failure event named a connection error: the router leaves the cheap tier out for a while.
    assert set(kit.engine.health.left_out()) == {"cheap"}
    # At least once: the counter is the process's, and a door an earlier test installed may still hear
    # LiteLLM's events and count its own engine's time out too.
    assert _tier_left_out_count("cheap") >= left_out_before + 1
    request_id = data["metadata"][METADATA_KEY]["request_id"]
    assert kit.state.get(request_id) is not None


def handler_headers(handler: EchoLMProxyHandler, data: dict[str, Any], response: Any) -> dict[str, str]:
    headers = asyncio.run(handler.async_post_call_response_headers_hook(data, None, response))
    assert headers is not None
    return headers


def test_a_response_without_a_fallback_keeps_the_summary() -> None:
    summary = DecisionSummary("r1", "route", "cheap")
    response = SimpleNamespace(_hidden_params={"additional_headers": {"x-litellm-attempted-fallbacks": 0}})

    assert as_served(summary, response) is summary


def _metric_value(series: str) -> float:
    """One series' value in this process's metrics (0 before it is first counted)."""
    lines = [line for line in metrics().render().decode().splitlines() if line.startswith(f"{series} ")]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def _tier_left_out_count(tier: str) -> float:
    return _metric_value(f'echolm_tier_left_out_total{{tier="{tier}"}}')


def _requests_counted(tier: str, tenant: str, action: str) -> float:
    return _metric_value(f'echolm_requests_total{{action="{action}",tenant="{tenant}",tier="{tier}"}}')


def test_a_request_the_caller_bypasses_goes_unchanged_and_is_counted(installed: Any) -> None:
    before = _requests_counted("strong", "team:B", "pass_through")
    messages = [{"role": "user", "content": PARAPHRASE}]
    data: dict[str, Any] = {"model": "strong", "messages": messages, "metadata": {"echolm_bypass": True}}

    asyncio.run(installed.handler.async_pre_call_hook(SimpleNamespace(team_id="B"), None, data, "acompletion"))

    assert data["model"] == "strong" and data["messages"] == messages and "fallbacks" not in data
    assert data["metadata"][METADATA_KEY]["action"] == "pass_through"
    assert _requests_counted("strong", "team:B", "pass_through") == before + 1


def test_the_router_doors_retry_goes_to_the_named_model_with_the_callers_messages(
    make_engine: Any, router_with_a_dead_cheap_tier: Any
) -> None:
    from echolm_middleware.doors.litellm_router import install_echolm

    # Failing tiers are never left out here, so the second call is decided like the first (what the Router
    # door does after a tier failed is the next test's).
    kit = make_engine(routing=ROUTING.model_copy(update={"failing_tier_cooldown_s": 0.0}))
    assert kit.engine.admit("acme", QUESTION, "Paris is the capital of France.", "strong")
    router = router_with_a_dead_cheap_tier
    router.num_retries = 1  # the Router's own retry of a failed call, which re-enters our strategy
    door = install_echolm(router, kit.engine)
    sent = SentMessages()
    litellm.callbacks.append(sent)
    original = [{"role": "user", "content": PARAPHRASE}]
    # What each record call was given and returned, for the failure message: one clean-clone CI saw the
    # example go unrecorded here (count 1) though both calls fell back; not reproduced in isolation.
    records: list[tuple[str, str, str]] = []
    record = kit.engine.record

    def traced_record(outcome: Any) -> Any:
        result = record(outcome)
        records.append((outcome.request_id, outcome.served_by, result))
        return result

    kit.engine.record = traced_record  # type: ignore[method-assign]
    messages = [dict(message) for message in original]
    metadata: dict[str, Any] = {"echolm_tenant": "acme"}
    try:

        async def run() -> list[Any]:
            # One message list and one metadata dict for both calls, as applications do.
            responses = [
                await router.acompletion(model="strong", messages=messages, metadata=metadata, num_retries=1)
                for _ in range(2)
            ]
            deadline = time.monotonic() + 20
            while kit.engine.store.count("acme") < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return responses

        responses = asyncio.run(run())
    finally:
        for registered in (litellm.callbacks, litellm._async_success_callback, litellm._async_failure_callback):
            registered[:] = [
                callback for callback in registered if callback is not door.callback and callback is not sent
            ]

    assert [response.choices[0].message.content for response in responses] == [STRONG_ANSWER] * 2
    # Each call was decided afresh (the reused metadata dict marks no retry), routed, and fell back.
    assert door.fail_open_counts == {"chosen tier failed: cheap": 2}
    # Recorded as the strong tier's answer to the caller's prompt.
    assert kit.engine.store.count("acme") == 2, records
    assert [m for m in sent.by_group.values()] == [original]
    # The caller's own list and dict are left as they were: nothing of ours was written into them.
    assert messages == original
    assert not any(key.startswith("echolm") and key != "echolm_tenant" for key in metadata), metadata


def test_through_the_router_door_the_call_after_a_tier_failed_goes_to_the_strong_tier_directly(
    make_engine: Any, router_with_a_dead_cheap_tier: Any
) -> None:
    from echolm_middleware.doors.litellm_router import install_echolm

    kit = make_engine()
    assert kit.engine.admit("acme", QUESTION, "Paris is the capital of France.", "strong")
    router = router_with_a_dead_cheap_tier
    router.num_retries = 1  # through this door, the Router's retry is what falls back to the named model
    door = install_echolm(router, kit.engine)
    try:

        async def run() -> None:
            for _ in range(2):
                await router.acompletion(model="strong", messages=[{"role": "user", "content": PARAPHRASE}],
                                         metadata={"echolm_tenant": "acme"}, num_retries=1)  # fmt: skip
                deadline = time.monotonic() + 20  # LiteLLM fires its failure event in the background
                while "cheap" not in kit.engine.health.left_out() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)

        asyncio.run(run())
    finally:
        for registered in (litellm.callbacks, litellm._async_success_callback, litellm._async_failure_callback):
            registered[:] = [callback for callback in registered if callback is not door.callback]

    first, second = sorted(kit.state.recent(0), key=lambda decision: decision.created_at)
    assert (first.tier, first.left_out_failing) == ("cheap", [])  # sent to the dead tier; the fallback answered
    assert (second.action, second.tier, second.left_out_failing) == ("route", "strong", ["cheap"])
    assert door.fail_open_counts == {"chosen tier failed: cheap": 1}  # the second never reached the dead tier


@pytest.mark.parametrize(
    ("key", "tenant", "caller"),
    [
        (UserAPIKeyAuth(api_key="k", team_id="acme", user_id="alice"), "team:acme", "user:alice"),
        (UserAPIKeyAuth(api_key="k", user_id="alice"), "user:alice", "user:alice"),
        # The master key, as LiteLLM authenticates it: the proxy admin, nobody in particular.
        (UserAPIKeyAuth(api_key="litellm_proxy_master_key", user_id="default_user_id"), "", "user:default_user_id"),
        # A key a proxy without a key database took on trust (it hashes whatever was sent).
        (UserAPIKeyAuth(api_key="sk-anything"), "", "key:"),
    ],
)
def test_the_tenant_comes_from_an_authenticated_identity_only(key: Any, tenant: str, caller: str) -> None:
    assert tenant_of(key) == tenant
    assert caller_of(key).startswith(caller)


@pytest.mark.parametrize(
    ("value", "bypassed"),
    [
        (True, True),
        ("true", True),
        (" TRUE ", True),
        ("false", False),
        (False, False),
        (0, False),
        ("yes", False),
        (1, False),
    ],
)
def test_the_bypass_flag_is_parsed_strictly(value: Any, bypassed: bool) -> None:
    assert bypass_requested(value) is bypassed


def test_a_router_call_that_names_no_tenant_passes_through_untouched(
    make_engine: Any, router_with_a_dead_cheap_tier: Any
) -> None:
    from echolm_middleware.doors.litellm_router import install_echolm

    kit = make_engine()
    assert kit.engine.admit("shared", QUESTION, "Paris is the capital of France.", "strong")
    door = install_echolm(router_with_a_dead_cheap_tier, kit.engine)
    metadata: dict[str, Any] = {}
    try:
        response = asyncio.run(
            router_with_a_dead_cheap_tier.acompletion(
                model="strong", messages=[{"role": "user", "content": PARAPHRASE}], metadata=metadata
            )
        )
    finally:
        for registered in (litellm.callbacks, litellm._async_success_callback, litellm._async_failure_callback):
            registered[:] = [callback for callback in registered if callback is not door.callback]

    assert response.choices[0].message.content == STRONG_ANSWER  # the named model, not the dead cheap tier
    assert door.fail_open_counts == {}
    (decision,) = kit.state.recent(0.0)  # every decision kept
    assert (decision.action, decision.reason) == ("pass_through", "no tenant identity (tenancy.shared is off)")


def test_a_streamed_answer_is_timed_from_our_hook_for_the_delay_signal(
    installed: Any, router_with_a_dead_cheap_tier: Any
) -> None:
    kit, handler = installed.kit, installed.handler
    data: dict[str, Any] = {"model": "strong", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    prior = kit.engine.service.estimate("strong")

    async def run() -> None:
        await handler.async_pre_call_hook(SimpleNamespace(team_id="A"), None, data, "acompletion")
        assert data["model"] == "strong"  # nothing cached yet: the strong tier, unchanged
        response = await router_with_a_dead_cheap_tier.acompletion(**data)
        async for _ in handler.async_post_call_streaming_iterator_hook(None, response, data):
            pass

    asyncio.run(run())

    # The echo tier answers at once: its measured latency replaces the 1-second prior.
    assert prior == 1.0 and 0.0 < kit.engine.service.estimate("strong") < prior


def test_the_time_our_hook_takes_is_not_taken_for_the_tiers_latency(
    installed: Any, router_with_a_dead_cheap_tier: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit, handler = installed.kit, installed.handler
    decide = kit.engine.prepare

    def slow_decision(request: Any) -> Any:  # as the first requests wait for the engine to load
        time.sleep(0.6)
        return decide(request)

    monkeypatch.setattr(kit.engine, "prepare", slow_decision)
    data: dict[str, Any] = {"model": "strong", "messages": [{"role": "user", "content": QUESTION}], "stream": True}

    async def run() -> None:
        await handler.async_pre_call_hook(SimpleNamespace(team_id="A"), None, data, "acompletion")
        response = await router_with_a_dead_cheap_tier.acompletion(**data)
        async for _ in handler.async_post_call_streaming_iterator_hook(None, response, data):
            pass

    asyncio.run(run())

    # The echo tier answers at once; the hook's 0.6 s is ours, not the tier's.
    summary = summary_in(data["metadata"])
    assert summary is not None and summary.overhead_ms >= 600
    assert 0.0 < kit.engine.service.estimate("strong") < 0.3


@pytest.mark.parametrize("call_type", ["aresponses", "anthropic_messages", "aembedding", "atext_completion"])
def test_calls_other_than_chat_completions_pass_through_unseen(installed: Any, call_type: str) -> None:
    kit, handler = installed.kit, installed.handler
    assert kit.engine.admit("team:A", QUESTION, "Paris is the capital of France.", "strong")
    data: dict[str, Any] = {
        "model": "strong",
        "input": PARAPHRASE,
        "messages": [{"role": "user", "content": PARAPHRASE}],
    }
    before = dict(data)

    returned = asyncio.run(handler.async_pre_call_hook(SimpleNamespace(team_id="A"), None, data, call_type))

    assert returned is data and data == before  # no model rewritten, no examples, no decision carried
    assert kit.state.recent(0.0) == []
