"""The reuse choice through each door: a cached answer reaches the caller without any tier being called.

The proxy hook and the Router strategy run over a real `litellm.Router` whose strong tier is an
EchoTier (real HTTP, every body kept) and whose `echolm-cache` group is zero-priced and unreachable: a
reused answer that tried to call a model would fail or show up in the tier's bodies.
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

from echolm_lab.bench.deployments import free_model_group
from echolm_middleware.config import ReuseSettings
from echolm_middleware.core.offload_model import FEATURES
from echolm_middleware.doors.access import EngineHandle
from echolm_middleware.doors.langchain_chat import EchoLMChatModel
from echolm_middleware.doors.litellm_common import METADATA_KEY
from echolm_middleware.doors.litellm_proxy import EchoLMProxyHandler
from echolm_middleware.errors import ConfigError
from tests.echo_tier import EchoTier
from tests.unit.conftest import ROUTING
from tests.unit.test_langchain_door import ScriptedTier
from tests.unit.test_proxy_handler import _requests_counted, _router_to

QUESTION = "What is the capital of France?"
PARAPHRASE = "What is the capital city of France?"  # similarity 0.93 under the word-hash embedder
ANSWER = "Paris is the capital of France."
CLOSE_IS_GOOD = [-20.0, 23.0] + [0.0] * (len(FEATURES) - 2)
CACHE_GROUP = "echolm-cache"


def _reusing(model_group: str | None = CACHE_GROUP) -> Any:
    reuse = ReuseSettings(enabled=True, weights=CLOSE_IS_GOOD, min_probability=0.5, model_group=model_group)
    return ROUTING.model_copy(update={"reuse": reuse})


class Costs(CustomLogger):
    """The cost LiteLLM logged for each successful call, by the model group it logged."""

    def __init__(self) -> None:
        super().__init__()
        self.by_group: dict[str, float | None] = {}

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        group = (kwargs.get("litellm_params", {}).get("metadata") or {}).get("model_group")
        self.by_group[str(group)] = kwargs.get("response_cost")


@pytest.fixture
def strong() -> Iterator[EchoTier]:
    with EchoTier("strong") as tier:
        yield tier


def _router(strong: EchoTier) -> Any:
    """The cheap tier down, the strong one an echo tier, and the zero-priced group reuse is logged under
    (never reachable: a reused answer that called it would fail)."""
    return _router_to(strong, free_model_group(CACHE_GROUP))


def _unregister(*callbacks: Any) -> None:
    for registered in (litellm.callbacks, litellm._async_success_callback, litellm._async_failure_callback):
        registered[:] = [callback for callback in registered if all(callback is not ours for ours in callbacks)]


async def _until(condition: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def _selected(kit: Any, tenant: str) -> int:
    vector = kit.embedder.embed([QUESTION])[0]
    return sum(c.example.selected for c in kit.store.nearest(tenant, vector, 10))


@pytest.mark.parametrize("stream", [False, True])
def test_the_proxy_serves_a_reused_answer_free_without_calling_a_tier(
    make_engine: Any, strong: EchoTier, stream: bool
) -> None:
    kit = make_engine(routing=_reusing())
    kit.engine.admit("team:A", QUESTION, ANSWER, "strong")
    counted = _requests_counted(CACHE_GROUP, "team:A", "reuse")
    handler = EchoLMProxyHandler(handle=EngineHandle(lambda: kit.engine))
    handler.handle.start().result()
    costs = Costs()
    litellm.callbacks.extend([handler, costs])
    router = _router(strong)
    data: dict[str, Any] = {"model": "strong", "messages": [{"role": "user", "content": PARAPHRASE}], "stream": stream}

    async def run() -> tuple[str, Any]:
        await handler.async_pre_call_hook(SimpleNamespace(team_id="A"), None, data, "acompletion")
        assert data["model"] == CACHE_GROUP
        response = await router.acompletion(**data)
        if stream:  # relayed through the door's stream hook, as the proxy does
            relayed = handler.async_post_call_streaming_iterator_hook(None, response, data)
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in relayed])
        else:
            text = response.choices[0].message.content
        await _until(lambda: _selected(kit, "team:A") == 1 and CACHE_GROUP in costs.by_group)
        return text, response

    try:
        text, response = asyncio.run(run())
        headers = asyncio.run(handler.async_post_call_response_headers_hook(data, None, response))
    finally:
        _unregister(handler, costs)

    assert text == ANSWER
    assert strong.bodies == []  # no model was called
    # LiteLLM's own spend record: free. (Only this group: LiteLLM's logging worker may still deliver an
    # earlier test's event to this logger.)
    assert costs.by_group[CACHE_GROUP] == 0.0
    assert headers is not None and headers["x-echolm-action"] == "reuse"
    assert _requests_counted(CACHE_GROUP, "team:A", "reuse") == counted + 1  # echolm_requests_total
    assert _selected(kit, "team:A") == 1  # recorded once, as a use of its example
    request_id = data["metadata"][METADATA_KEY]["request_id"]
    assert kit.engine.explain(request_id).action == "reuse"
    if not stream:
        assert response.choices[0].finish_reason == "stop"
        assert response.usage.completion_tokens == len(ANSWER.split())


def test_the_router_door_serves_a_reused_answer_without_calling_a_tier(make_engine: Any, strong: EchoTier) -> None:
    from echolm_middleware.doors.litellm_router import install_echolm

    kit = make_engine(routing=_reusing())
    kit.engine.admit("acme", QUESTION, ANSWER, "strong")
    router = _router(strong)
    door = install_echolm(router, kit.engine)
    try:

        async def run() -> Any:
            response = await router.acompletion(
                model="strong",
                messages=[{"role": "user", "content": PARAPHRASE}],
                metadata={"echolm_tenant": "acme"},
            )
            await _until(lambda: _selected(kit, "acme") == 1)
            return response

        response = asyncio.run(run())
    finally:
        _unregister(door.callback)

    assert response.choices[0].message.content == ANSWER
    assert response.model == "strong"  # the model the caller named
    assert strong.bodies == []
    assert _selected(kit, "acme") == 1


def test_a_reuse_group_missing_from_the_model_list_stops_the_router_door(make_engine: Any, strong: EchoTier) -> None:
    from echolm_middleware.doors.litellm_router import install_echolm

    kit = make_engine(routing=_reusing("no-such-group"))

    with pytest.raises(ConfigError, match=r"routing\.reuse\.model_group: 'no-such-group'"):
        install_echolm(_router(strong), kit.engine)


@pytest.mark.parametrize("stream", [False, True])
def test_the_langchain_door_serves_a_reused_answer_without_calling_a_tier(make_engine: Any, stream: bool) -> None:
    kit = make_engine(routing=_reusing(None))
    kit.engine.admit("acme", QUESTION, ANSWER, "strong")
    cheap, strong_tier = ScriptedTier(answer="cheap answer"), ScriptedTier(answer="strong answer")
    model = EchoLMChatModel(tenant="acme", tiers=[cheap, strong_tier], engine=kit.engine)

    if stream:
        chunks = list(model.stream(PARAPHRASE))
        text = "".join(str(chunk.content) for chunk in chunks)
        metadata = chunks[0].response_metadata
    else:
        message = model.invoke(PARAPHRASE)
        text, metadata = str(message.content), message.response_metadata

    assert text == ANSWER
    assert metadata["echolm"]["action"] == "reuse"
    if not stream:  # LangChain's usage callbacks count by model_name: the model asked for answered it
        assert metadata["model_name"] == "strong" and message.usage_metadata is not None
    assert cheap.seen == [] and strong_tier.seen == []
    assert _selected(kit, "acme") == 1


def test_the_proxy_shows_a_cached_answer_standing_in_for_the_cheap_tier_under_load(
    make_engine: Any, strong: EchoTier
) -> None:
    """Below the reuse bar, with the strong tier busy and no example to show, the router sends the request
    to the cheap tier (down here: a call to it would fail); the cached answer stands in, shown as such."""
    from echolm_middleware.core.routing import LoadTracker
    from tests.unit.conftest import RETRIEVAL

    reuse = ReuseSettings(enabled=True, weights=CLOSE_IS_GOOD, min_probability=0.9, model_group=CACHE_GROUP)
    kit = make_engine(
        routing=ROUTING.model_copy(update={"reuse": reuse}),
        retrieval=RETRIEVAL.model_copy(update={"threshold": 0.99}),  # no example clears it
    )
    kit.engine.admit("team:A", QUESTION, ANSWER, "strong")
    kit.engine.load = LoadTracker(window_s=2.0, clock=kit.clock)
    for n in range(5):
        kit.engine.load.begin("strong", f"busy {n}")
    kit.clock.advance(10.0)
    handler = EchoLMProxyHandler(handle=EngineHandle(lambda: kit.engine))
    handler.handle.start().result()
    litellm.callbacks.append(handler)
    router = _router(strong)
    data: dict[str, Any] = {"model": "strong", "messages": [{"role": "user", "content": PARAPHRASE}]}

    async def run() -> Any:
        await handler.async_pre_call_hook(SimpleNamespace(team_id="A"), None, data, "acompletion")
        return await router.acompletion(**data)

    try:
        response = asyncio.run(run())
        headers = asyncio.run(handler.async_post_call_response_headers_hook(data, None, response))
    finally:
        _unregister(handler)

    assert response.choices[0].message.content == ANSWER and strong.bodies == []
    assert headers is not None and headers["x-echolm-action"] == "reuse"
    assert "the router sent it to cheap; the nearest cached answer stands in" in headers["x-echolm-reason"]
    decision = kit.engine.explain(data["metadata"][METADATA_KEY]["request_id"])
    assert decision.reuse_stands_in_for == "cheap"
