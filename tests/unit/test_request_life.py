"""The engine owns a request's life: a routed request is load on its tier from `prepare` until exactly one
`record` or `release`, whichever door it came through and however it ended (answer, tier failure,
cancellation, a caller that hangs up before the first token, a decision that came too late)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk

from echolm_middleware.core.engine import Engine
from echolm_middleware.core.types import ChatRequest, Outcome
from echolm_middleware.doors.access import EngineHandle, FailOpenCounter, prepare_or_fail_open
from echolm_middleware.doors.langchain_chat import EchoLMChatModel
from echolm_middleware.doors.litellm_proxy import EchoLMProxyHandler
from tests.unit.conftest import EngineFactory
from tests.unit.test_langchain_door import ANSWER, PARAPHRASE, QUESTION, ScriptedTier


def _in_flight(engine: Engine) -> int:
    return sum(engine.load.in_flight().values())


def _in_flight_once_released(engine: Engine, within_s: float = 2.0) -> int:
    """In flight once the doors' background releases have run: at most `within_s`, far below
    `routing.load_stale_after_s` (the doors end load on our write threads, off the caller's path)."""
    deadline = time.monotonic() + within_s
    while _in_flight(engine) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _in_flight(engine)


class HangingTier(ScriptedTier):
    """A tier that never sends its first chunk (a model server stuck in a long prefill)."""

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        self.seen.append(list(messages))
        await asyncio.Event().wait()
        yield ChatGenerationChunk(message=ANSWER)  # type: ignore[arg-type]  # never reached


def test_prepare_puts_a_routed_request_in_flight_and_record_ends_it_once(make_engine: EngineFactory) -> None:
    engine = make_engine().engine
    prepared = engine.prepare(ChatRequest("A", "strong", [{"role": "user", "content": QUESTION}]))
    assert engine.load.in_flight() == {"strong": 1}

    engine.record(Outcome(prepared.decision.request_id, "strong", ANSWER, "stop"))
    engine.release(prepared.decision.request_id)  # a late second end changes nothing

    assert _in_flight(engine) == 0


def test_a_request_that_passes_through_is_never_in_flight(make_engine: EngineFactory) -> None:
    engine = make_engine().engine

    engine.prepare(ChatRequest("A", "not-a-tier", [{"role": "user", "content": QUESTION}]))

    assert _in_flight(engine) == 0


def test_a_langchain_stream_the_caller_hangs_up_before_its_first_token_leaves_no_load(
    make_engine: EngineFactory,
) -> None:
    engine = make_engine().engine
    strong = HangingTier(answer=ANSWER)
    model = EchoLMChatModel(tenant="default", tiers=[ScriptedTier(answer="cheap"), strong], engine=engine)

    async def hang_up() -> int:
        async def read() -> None:
            async for _ in model.astream(QUESTION):
                pass

        reader = asyncio.create_task(read())
        while not strong.seen:  # the request has reached its tier, which has sent nothing yet
            await asyncio.sleep(0.01)
        during = _in_flight(engine)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        return during

    during = asyncio.run(hang_up())

    assert (during, _in_flight_once_released(engine)) == (1, 0)  # not after routing.load_stale_after_s
    assert engine.store.count("default") == 0  # and nothing of it was recorded


@pytest.mark.parametrize("path", ["invoke", "ainvoke", "stream", "astream"])
def test_every_langchain_path_ends_the_load_after_an_answer(make_engine: EngineFactory, path: str) -> None:
    engine = make_engine().engine
    model = EchoLMChatModel(
        tenant="default", tiers=[ScriptedTier(answer="cheap"), ScriptedTier(answer=ANSWER)], engine=engine
    )

    async def call(question: str) -> None:
        if path == "invoke":
            model.invoke(question)
        elif path == "ainvoke":
            await model.ainvoke(question)
        elif path == "stream":
            list(model.stream(question))
        else:
            [chunk async for chunk in model.astream(question)]

    asyncio.run(call(QUESTION))
    asyncio.run(call(PARAPHRASE))  # the cheap tier with the first answer as its example

    assert _in_flight(engine) == 0
    assert engine.store.count("default") == 1


def test_a_sync_stream_closed_after_its_first_chunk_ends_the_load(make_engine: EngineFactory) -> None:
    engine = make_engine().engine
    model = EchoLMChatModel(
        tenant="default", tiers=[ScriptedTier(answer="cheap"), ScriptedTier(answer=ANSWER)], engine=engine
    )

    stream = model.stream(QUESTION)
    next(stream)
    stream.close()

    assert _in_flight_once_released(engine) == 0
    assert engine.store.count("default") == 0  # a partial answer is never admitted


def test_a_failing_tier_ends_the_load_of_the_call_it_failed(make_engine: EngineFactory) -> None:
    engine = make_engine().engine
    failing = ScriptedTier(answer="cheap", fails_after_chunks=0)
    model = EchoLMChatModel(tenant="default", tiers=[failing, ScriptedTier(answer=ANSWER)], engine=engine)
    model.invoke(QUESTION)

    model.invoke(PARAPHRASE)  # routed to the failing cheap tier, then to the strong one unchanged

    assert failing.seen and _in_flight_once_released(engine) == 0


def test_a_decision_that_arrives_after_the_door_gave_up_is_released(make_engine: EngineFactory) -> None:
    """The door fails open at its time budget; the engine's thread finishes later and must not hold load."""
    engine = make_engine().engine
    gate = threading.Event()
    prepare = engine.prepare

    def slow_prepare(request: ChatRequest) -> Any:
        gate.wait(5)
        return prepare(request)

    engine.prepare = slow_prepare  # type: ignore[method-assign]
    handle = EngineHandle(lambda: engine)
    request = ChatRequest("A", "strong", [{"role": "user", "content": QUESTION}])

    prepared, _ = asyncio.run(prepare_or_fail_open(handle, FailOpenCounter(), 0.05, request))
    assert prepared is not None and prepared.decision.action == "fail_open"
    gate.set()
    deadline = time.monotonic() + 5
    while "strong" not in engine.load.in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "strong" in engine.load.in_flight()  # the late decision did put the request on its tier ...
    while _in_flight(engine) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _in_flight(engine) == 0  # ... and it was taken off again without waiting for staleness


def test_the_proxy_door_releases_a_stream_whose_client_hangs_up_before_its_first_token(
    make_engine: EngineFactory,
) -> None:
    """LiteLLM fires no log event for a stream that sent nothing before the client left: the door's stream
    hook is what ends the request's load."""
    engine = make_engine().engine
    handler = EchoLMProxyHandler(handle=EngineHandle(lambda: engine))
    data: dict[str, Any] = {"model": "strong", "messages": [{"role": "user", "content": QUESTION}], "stream": True}

    async def upstream() -> AsyncIterator[str]:
        await asyncio.Event().wait()  # the tier has not produced its first token
        yield "never"

    async def hang_up() -> int:
        await handler.async_pre_call_hook(SimpleNamespace(team_id="A"), None, data, "acompletion")
        during = _in_flight(engine)
        relay = handler.async_post_call_streaming_iterator_hook(None, upstream(), data)
        reader = asyncio.create_task(anext(relay))
        await asyncio.sleep(0.05)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        return during

    assert (asyncio.run(hang_up()), _in_flight_once_released(engine)) == (1, 0)


def _chunk(content: str | None, finish_reason: str | None = None) -> SimpleNamespace:
    """A streamed chunk as LiteLLM's ModelResponseStream reads: choices[0].delta.content, finish_reason."""
    return SimpleNamespace(
        choices=[SimpleNamespace(delta=SimpleNamespace(content=content), finish_reason=finish_reason)]
    )


class _Wrapper:
    """LiteLLM's stream wrapper as the hook sees it: it relays the chunks the client is sent (ending in a
    "stop" of its own making when the upstream sent none) and keeps the upstream's in `chunks`."""

    def __init__(self, sent: list[SimpleNamespace], upstream_reason: str | None) -> None:
        self._chunks = sent
        self.chunks = [*sent[:-1], _chunk(None, upstream_reason)] if upstream_reason else sent[:-1]

    def __aiter__(self) -> AsyncIterator[SimpleNamespace]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[SimpleNamespace]:
        for chunk in self._chunks:
            yield chunk


@pytest.mark.parametrize(
    ("upstream_reason", "admitted"),
    [
        ("stop", 1),  # the upstream finished: the answer the client read is cached
        (None, 0),  # it sent no finish reason: the "stop" the client saw was LiteLLM's, not whole
        ("length", 0),  # cut at max_tokens
    ],
)
def test_the_proxy_doors_stream_hook_records_a_finished_stream_from_what_the_client_read(
    make_engine: EngineFactory, upstream_reason: str | None, admitted: int
) -> None:
    kit = make_engine()
    engine = kit.engine
    handler = EchoLMProxyHandler(handle=EngineHandle(lambda: engine))
    data: dict[str, Any] = {"model": "strong", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    words = ANSWER.split(" ")
    chunks = [_chunk(word if i == 0 else " " + word) for i, word in enumerate(words)] + [_chunk(None, "stop")]

    async def relay_all() -> list[Any]:
        await handler.async_pre_call_hook(SimpleNamespace(team_id="A"), None, data, "acompletion")
        stream = _Wrapper(chunks, upstream_reason)
        return [chunk async for chunk in handler.async_post_call_streaming_iterator_hook(None, stream, data)]

    assert asyncio.run(relay_all()) == chunks  # relayed unchanged
    assert _in_flight(engine) == 0  # recorded, which ended its load
    assert kit.store.count("team:A") == admitted
    if admitted:
        assert [e.answer for e in kit.store.examples("team:A")] == [ANSWER]
