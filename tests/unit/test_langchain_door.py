"""The LangChain door's own logic over the fake engine parts and fake tier models.

The real tiers, MiniLM and Chroma drive the same door in tests/integration/test_langchain_door.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForLLMRun
from langchain_core.globals import set_llm_cache
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, PrivateAttr

from echolm_middleware.config import ReuseSettings, TenancySettings
from echolm_middleware.core.engine import Engine
from echolm_middleware.core.tier_health import TierHealth
from echolm_middleware.doors.langchain_chat import EchoLMChatModel, default_settings
from echolm_middleware.errors import UnknownRequest
from tests.unit.conftest import ROUTING, EngineFactory, EngineKit, FakeClock

QUESTION = "What is the capital of France?"
PARAPHRASE = "What is the capital city of France?"  # similarity 0.93 under the word-hash embedder
ANSWER = "Paris is the capital of France."


class ScriptedTier(BaseChatModel):
    """A tier that answers with a fixed text (in word chunks when streamed) and keeps what it was sent."""

    answer: str
    # A server that is down raises before any chunk; one killed mid-stream raises after this many.
    fails_after_chunks: int | None = None
    usage: tuple[int, int] | None = None  # (input, output) tokens its answers report
    model_name: str = "scripted"  # in its answers' response metadata, as providers name the model that wrote them
    _seen: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _kwargs: list[dict[str, Any]] = PrivateAttr(default_factory=list)
    _tools: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def seen(self) -> list[list[BaseMessage]]:
        return self._seen

    @property
    def call_arguments(self) -> list[dict[str, Any]]:
        """Each call's arguments besides the messages (stop included)."""
        return self._kwargs

    def _usage(self) -> dict[str, Any]:
        if self.usage is None:
            return {}
        prompt, completion = self.usage
        return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}

    def _message(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        self._seen.append(list(messages))
        self._kwargs.append(dict(kwargs))
        if self.fails_after_chunks is not None:
            raise ConnectionError("tier server down")
        tools = kwargs.get("tools")
        if tools:
            name = tools[0]["function"]["name"]
            return AIMessage(content="", tool_calls=[{"name": name, "args": {"city": "Paris"}, "id": "call-1"}])
        usage = self._usage()
        return AIMessage(
            content=self.answer,
            response_metadata={"finish_reason": "stop", "model_name": self.model_name},
            usage_metadata=usage or None,  # type: ignore[arg-type]
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._message(messages, stop=stop, **kwargs))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        self._seen.append(list(messages))
        self._kwargs.append({"stop": stop, **kwargs})
        words = self.answer.split(" ")
        for index, word in enumerate(words):
            if index == self.fails_after_chunks:
                raise ConnectionError("tier server killed mid-stream")
            last = index == len(words) - 1
            # As OpenAI-style models do: the finish reason in the generation info, usage on the last chunk.
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=word + ("" if last else " "),
                    response_metadata={"model_name": self.model_name} if last else {},
                    usage_metadata=(self._usage() or None) if last else None,  # type: ignore[arg-type]
                ),
                generation_info={"finish_reason": "stop"} if last else None,
            )

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any) -> Runnable[Any, Any]:
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)


class Door:
    def __init__(self, kit: EngineKit) -> None:
        self.kit = kit
        self.cheap = ScriptedTier(answer="cheap answer")
        self.strong = ScriptedTier(answer=ANSWER)
        self.model = EchoLMChatModel(tenant="default", tiers=[self.cheap, self.strong], engine=kit.engine)

    @property
    def engine(self) -> Engine:
        return self.kit.engine


@pytest.fixture
def door(make_engine: EngineFactory) -> Door:
    return Door(make_engine())


def _echolm(message: BaseMessage) -> dict[str, Any]:
    return dict(message.response_metadata["echolm"])


def _text(messages: Sequence[BaseMessage]) -> str:
    return "\n".join(str(m.content) for m in messages)


def test_second_paraphrase_goes_to_the_cheap_tier_with_the_first_answer(door: Door) -> None:
    first = door.model.invoke(QUESTION)
    second = door.model.invoke(PARAPHRASE)

    assert first.content == ANSWER
    assert _echolm(first)["tier"] == "strong" and _echolm(first)["examples"] == 0
    meta = _echolm(second)
    assert meta["tier"] == "cheap" and meta["examples"] == 1
    assert meta["best_similarity"] is None  # not shown unless requests.best_similarity_header
    assert second.content == "cheap answer"
    assert ANSWER in _text(door.cheap.seen[-1])  # the example reached the cheap tier's prompt
    assert door.kit.state.recorded_by(meta["request_id"]) == "cheap"


def test_stream_yields_chunks_with_the_decision_first_and_records_once(door: Door) -> None:
    chunks = list(door.model.stream(QUESTION))

    # One chunk per word, then LangChain's empty closing chunk.
    assert [str(c.content) for c in chunks if c.content] == [w + " " for w in ANSWER.split(" ")[:-1]] + ["France."]
    assert "".join(str(c.content) for c in chunks) == ANSWER
    request_id = _echolm(chunks[0])["request_id"]
    assert all("echolm" not in c.response_metadata for c in chunks[1:])
    assert door.kit.state.recorded_by(request_id) == "strong"
    # The whole streamed answer was admitted, and only once.
    stored = door.kit.store.nearest("default", door.kit.embedder.embed([QUESTION])[0], 10)
    assert [c.example.answer for c in stored] == [ANSWER]


def test_abandoned_stream_is_not_recorded(door: Door) -> None:
    stream = door.model.stream(QUESTION)
    first = next(stream)
    stream.close()

    assert door.kit.state.recorded_by(_echolm(first)["request_id"]) is None
    assert door.engine.load.loads().get("strong", 0.0) < 1.0  # the load it began was finished


def test_async_paths_route_and_record(door: Door) -> None:
    async def scenario() -> tuple[BaseMessage, list[BaseMessage]]:
        first = await door.model.ainvoke(QUESTION)
        chunks = [chunk async for chunk in door.model.astream(PARAPHRASE)]
        return first, chunks

    first, chunks = asyncio.run(scenario())
    assert _echolm(first)["tier"] == "strong"
    assert _echolm(chunks[0])["tier"] == "cheap"
    assert [str(c.content) for c in chunks if c.content] == ["cheap ", "answer"]
    assert door.kit.state.recorded_by(_echolm(chunks[0])["request_id"]) == "cheap"


def test_async_batch_of_twenty_records_each_request_exactly_once(door: Door) -> None:
    questions = [f"What is fact number {n} about the river Nile?" for n in range(20)]
    results = asyncio.run(door.model.abatch(questions))

    ids = [_echolm(r)["request_id"] for r in results]
    assert len(set(ids)) == 20
    assert all(door.kit.state.recorded_by(i) for i in ids)
    assert not door.kit.state.mark_recorded(ids[0], "strong")  # a second record of the same id is refused


def test_tenants_never_see_each_others_examples(door: Door) -> None:
    door.model.invoke(QUESTION, config={"metadata": {"echolm_tenant": "acme"}})
    other = door.model.invoke(PARAPHRASE, config={"metadata": {"echolm_tenant": "globex"}})
    same = door.model.invoke(PARAPHRASE, config={"metadata": {"echolm_tenant": "acme"}})

    assert _echolm(other)["examples"] == 0 and _echolm(other)["best_similarity"] is None
    assert _echolm(same)["examples"] == 1
    assert ANSWER not in _text(door.strong.seen[-2])


def test_constructor_tenant_is_the_default_namespace(make_engine: EngineFactory) -> None:
    kit = make_engine()
    acme = EchoLMChatModel(tiers=[ScriptedTier(answer="x"), ScriptedTier(answer=ANSWER)], engine=kit.engine,
                           tenant="acme")  # fmt: skip
    acme.invoke(QUESTION)
    vector = kit.embedder.embed([QUESTION])[0]
    assert kit.store.nearest("acme", vector, 5) and not kit.store.nearest("default", vector, 5)


def test_a_model_that_names_no_tenant_passes_through_unless_the_cache_is_shared(make_engine: EngineFactory) -> None:
    kit = make_engine()
    kit.engine.admit("shared", QUESTION, ANSWER, "strong")
    anonymous = EchoLMChatModel(tiers=[ScriptedTier(answer="x"), ScriptedTier(answer=ANSWER)], engine=kit.engine)

    message = anonymous.invoke(PARAPHRASE)

    assert _echolm(message)["action"] == "pass_through"
    assert _echolm(message)["reason"] == "no tenant identity (tenancy.shared is off)"
    shared = make_engine(tenancy=TenancySettings(shared=True))
    shared.engine.admit("shared", QUESTION, ANSWER, "strong")
    model = EchoLMChatModel(tiers=[ScriptedTier(answer="x"), ScriptedTier(answer=ANSWER)], engine=shared.engine)
    assert _echolm(model.invoke(PARAPHRASE))["examples"]  # the shared cache served it


def test_bound_tools_pass_through_to_the_requested_tier_untouched(door: Door) -> None:
    class GetWeather(BaseModel):
        """Weather in a city."""

        city: str

    door.model.invoke(QUESTION)  # an example exists, yet tool requests must not get it
    result = door.model.bind_tools([GetWeather]).invoke(PARAPHRASE)

    assert isinstance(result, AIMessage)
    assert result.tool_calls and result.tool_calls[0]["name"] == "GetWeather"
    meta = _echolm(result)
    assert meta["action"] == "pass_through" and meta["tier"] == "strong"
    assert _text(door.strong.seen[-1]) == PARAPHRASE


def test_with_structured_output_parses_through_the_tools_path(door: Door) -> None:
    class GetWeather(BaseModel):
        """Weather in a city."""

        city: str

    parsed = door.model.with_structured_output(GetWeather).invoke("Weather in Paris?")
    assert parsed == GetWeather(city="Paris")


def test_a_failing_engine_part_fails_open_to_the_requested_tier(door: Door) -> None:
    def broken(texts: Sequence[str]) -> list[list[float]]:
        raise RuntimeError("embedder down")

    door.kit.embedder.embed = broken  # type: ignore[method-assign]
    result = door.model.invoke(QUESTION)

    assert result.content == ANSWER
    assert _echolm(result)["action"] == "fail_open"
    assert door.model.fail_open_counts == {"RuntimeError": 1}
    assert _text(door.strong.seen[-1]) == QUESTION


def test_an_engine_that_never_builds_fails_open(make_engine: EngineFactory) -> None:
    from echolm_middleware.config import Settings, StoreSettings

    settings = default_settings(["cheap", "strong"]).model_copy(
        update={"store": StoreSettings(backend="chroma", server_url="http://127.0.0.1:9")}
    )
    assert isinstance(settings, Settings)
    strong = ScriptedTier(answer=ANSWER)
    model = EchoLMChatModel(
        tenant="default", tiers=[ScriptedTier(answer="x"), strong], settings=settings, startup_wait_s=5
    )
    result = model.invoke(QUESTION)

    assert result.content == ANSWER and _echolm(result)["action"] == "fail_open"
    assert next(iter(model.fail_open_counts)).startswith("engine not ready")


class Runs(BaseCallbackHandler):
    """Counts the chat-model runs a call opens and the tokens their ends report."""

    def __init__(self) -> None:
        self.starts = 0
        self.ends = 0
        self.tokens: list[str] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.starts += 1

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.ends += 1

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


@pytest.mark.parametrize("path", ["invoke", "stream", "ainvoke", "astream"])
def test_a_call_is_one_run_with_one_usage_record(door: Door, path: str) -> None:
    from langchain_core.callbacks import get_usage_metadata_callback

    door.strong.usage = (12, 7)
    runs = Runs()
    config: Any = {"callbacks": [runs]}
    with get_usage_metadata_callback() as usage:
        if path == "invoke":
            door.model.invoke(QUESTION, config=config)
        elif path == "stream":
            list(door.model.stream(QUESTION, config=config))
        elif path == "ainvoke":
            asyncio.run(door.model.ainvoke(QUESTION, config=config))
        else:

            async def consume() -> None:
                async for _ in door.model.astream(QUESTION, config=config):
                    pass

            asyncio.run(consume())
    assert (runs.starts, runs.ends) == (1, 1)  # ours only: the tier ran inside our run
    totals = list(usage.usage_metadata.values())
    assert len(totals) == 1 and totals[0]["input_tokens"] == 12 and totals[0]["output_tokens"] == 7
    if path in ("stream", "astream"):
        assert "".join(runs.tokens) == ANSWER  # each chunk once, through our run


def test_langchain_cache_cannot_short_circuit_the_door(door: Door) -> None:
    from langchain_core.caches import InMemoryCache

    set_llm_cache(InMemoryCache())
    try:
        first = door.model.invoke(QUESTION)
        second = door.model.invoke(QUESTION)
    finally:
        set_llm_cache(None)
    assert _echolm(first)["request_id"] != _echolm(second)["request_id"]


def test_feedback_reaches_the_engine_and_rejects_bad_input(door: Door) -> None:
    door.model.invoke(QUESTION)
    routed = door.model.invoke(PARAPHRASE)
    door.model.feedback(_echolm(routed)["request_id"], 1.0)

    with pytest.raises(ValueError, match="score"):
        door.model.feedback(_echolm(routed)["request_id"], 3.0)
    with pytest.raises(UnknownRequest):
        door.model.feedback("no-such-request", 0.5)


def test_feedback_names_the_tenant_a_call_named_and_no_other(make_engine: EngineFactory) -> None:
    kit = make_engine()
    kit.engine.admit("acme", QUESTION, ANSWER, "strong")
    model = EchoLMChatModel(tiers=[ScriptedTier(answer="x"), ScriptedTier(answer=ANSWER)], engine=kit.engine)
    routed = model.invoke(PARAPHRASE, config={"metadata": {"echolm_tenant": "acme"}})
    request_id = _echolm(routed)["request_id"]

    with pytest.raises(UnknownRequest):
        model.feedback(request_id, 1.0)  # the model itself names no tenant: not acme's request to score
    with pytest.raises(UnknownRequest):
        model.feedback(request_id, 1.0, tenant="globex")
    model.feedback(request_id, 1.0, tenant="acme")
    assert kit.state.load_posteriors() == {("cheap", "high|acme"): pytest.approx((1.0, 0.0))}


def test_tier_names_must_match_the_models() -> None:
    with pytest.raises(ValueError, match="one unique name per tier"):
        EchoLMChatModel(tiers=[ScriptedTier(answer="a")], tier_names=["a", "b"])
    with pytest.raises(ValueError, match="requested_tier"):
        EchoLMChatModel(tiers=[ScriptedTier(answer="a")], tier_names=["a"], requested_tier="b")


def test_default_settings_rank_the_tiers_cheapest_first() -> None:
    settings = default_settings(["small", "medium", "large"])
    assert [t.quality_prior for t in settings.tiers] == [0.3, 0.55, 0.8]
    assert all(t.cost_per_1k_tokens == 0.0 for t in settings.tiers)


# ---- the tier we chose fails -------------------------------------------------------------------


def _cheap_tier_down(door: Door, fails_after_chunks: int = 0) -> None:
    door.model.invoke(QUESTION)  # the strong answer becomes an example; its paraphrase goes to cheap
    door.cheap.fails_after_chunks = fails_after_chunks


def _answered_by_strong_unchanged(door: Door, meta: dict[str, Any]) -> None:
    assert meta["action"] == "fail_open" and meta["tier"] == "strong"
    assert meta["reason"] == "chosen tier cheap failed"
    assert [str(m.content) for m in door.strong.seen[-1]] == [PARAPHRASE]  # without our example
    assert door.model.fail_open_counts == {"chosen tier failed: cheap": 1}
    assert door.engine.load.loads().get("cheap", 0.0) < 1.0  # the load it began was finished
    assert set(door.engine.health.left_out()) == {"cheap"}  # a connection error: the tier is failing


def test_a_request_whose_chosen_tier_is_down_goes_unchanged_to_the_tier_it_named(door: Door) -> None:
    _cheap_tier_down(door)

    answer = door.model.invoke(PARAPHRASE)

    assert answer.content == ANSWER
    _answered_by_strong_unchanged(door, _echolm(answer))


def test_a_stream_whose_chosen_tier_fails_before_its_first_chunk_comes_from_the_named_tier(door: Door) -> None:
    _cheap_tier_down(door)

    chunks = list(door.model.stream(PARAPHRASE))

    assert "".join(str(c.content) for c in chunks) == ANSWER
    _answered_by_strong_unchanged(door, _echolm(chunks[0]))


def test_the_requests_after_the_chosen_tier_failed_go_to_the_strong_tier_until_its_time_out_passes(
    make_engine: EngineFactory,
) -> None:
    # Reuse off: the same paraphrase asked again would be answered from the cache, calling no tier.
    door = Door(make_engine(routing=ROUTING.model_copy(update={"reuse": ReuseSettings(enabled=False)})))
    _cheap_tier_down(door)
    clock = FakeClock(0.0)
    door.engine.health = TierHealth(5.0, 60.0, clock=clock)
    door.model.invoke(PARAPHRASE)  # fails on the cheap tier, answered by the strong one

    after = door.model.invoke(PARAPHRASE)

    meta = _echolm(after)
    assert (meta["action"], meta["tier"]) == ("route", "strong")
    assert meta["reason"] == "routed; left out after failing: cheap"
    assert door.model.fail_open_counts == {"chosen tier failed: cheap": 1}  # it never reached the dead tier
    door.cheap.fails_after_chunks = None  # the server is back
    clock.advance(5.0)
    assert _echolm(door.model.invoke(PARAPHRASE))["tier"] == "cheap"  # tried again, and it answered
    assert door.engine.health.left_out() == {}


def test_async_paths_fall_back_too(door: Door) -> None:
    _cheap_tier_down(door)
    clock = FakeClock(0.0)
    door.engine.health = TierHealth(5.0, 60.0, clock=clock)

    async def scenario() -> tuple[BaseMessage, list[BaseMessage]]:
        answer = await door.model.ainvoke(PARAPHRASE)
        clock.advance(5.0)  # the cheap tier's time out passes: the stream is the request that tries it
        return answer, [chunk async for chunk in door.model.astream(PARAPHRASE)]

    answer, chunks = asyncio.run(scenario())

    assert answer.content == ANSWER and "".join(str(c.content) for c in chunks) == ANSWER
    assert _echolm(answer)["tier"] == "strong" and _echolm(chunks[0])["tier"] == "strong"
    assert door.model.fail_open_counts == {"chosen tier failed: cheap": 2}


def test_a_stream_that_dies_after_the_caller_read_part_of_it_raises(door: Door) -> None:
    _cheap_tier_down(door, fails_after_chunks=1)
    read: list[str] = []

    with pytest.raises(ConnectionError, match="mid-stream"):
        for chunk in door.model.stream(PARAPHRASE):
            read.append(str(chunk.content))

    assert read == ["cheap "]  # a second answer cannot follow half of the first
    assert door.engine.load.loads().get("cheap", 0.0) < 1.0


def test_a_failure_of_the_tier_the_caller_named_is_theirs(door: Door) -> None:
    door.strong.fails_after_chunks = 0

    with pytest.raises(ConnectionError):
        door.model.invoke(QUESTION)
    assert door.model.fail_open_counts == {}
    assert set(door.engine.health.left_out()) == {"strong"}  # the requests after it may go to the cheap tier


def test_constructor_and_call_parameters_reach_the_chosen_tier(make_engine: EngineFactory) -> None:
    cheap, strong = ScriptedTier(answer="cheap answer"), ScriptedTier(answer=ANSWER)
    model = EchoLMChatModel(
        tenant="default", tiers=[cheap, strong], engine=make_engine().engine, temperature=0, max_tokens=20, stop=["##"]
    )
    model.invoke(QUESTION)
    assert strong.call_arguments[-1] == {"stop": ["##"], "temperature": 0, "max_tokens": 20}
    list(model.stream(QUESTION, temperature=0.2, stop=["!"]))  # a call's own values win
    assert strong.call_arguments[-1] == {"stop": ["!"], "temperature": 0.2, "max_tokens": 20}


def test_a_calls_model_names_the_requested_tier_and_an_unknown_one_is_refused(door: Door) -> None:
    result = door.model.invoke(QUESTION, model="cheap")
    assert _echolm(result)["tier"] == "cheap" and result.content == "cheap answer"
    assert "model" not in door.cheap.call_arguments[-1]  # the name is ours, not the tier's model
    with pytest.raises(ValueError, match="'gpt-4o' is not one of the tiers"):
        door.model.invoke(QUESTION, model="gpt-4o")
    named = EchoLMChatModel(tenant="default", tiers=[door.cheap, door.strong], engine=door.engine, model="cheap")
    assert _echolm(named.invoke(QUESTION))["tier"] == "cheap"
    assert named._get_ls_params()["ls_model_name"] == "cheap"
    assert named._get_ls_params(model="strong")["ls_model_name"] == "strong"


def test_settings_of_the_tiers_own_models_are_refused_not_dropped(door: Door) -> None:
    from pydantic import ValidationError

    for name, value in (("timeout", 5), ("api_key", "sk-x"), ("max_retries", 2)):
        with pytest.raises(ValidationError, match=f"does not take '{name}'.*set it on the models in `tiers=`"):
            EchoLMChatModel(tiers=[door.cheap, door.strong], engine=door.engine, **{name: value})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        EchoLMChatModel(tiers=[door.cheap, door.strong], engine=door.engine, temprature=0)


def test_models_with_the_same_settings_share_one_engine_built_once(
    make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from echolm_middleware.doors import langchain_chat

    kit = make_engine()
    builds: list[str] = []

    def slow_build(settings: Any) -> Engine:
        builds.append(settings.tiers[0].name)
        time.sleep(0.2)  # long enough for every constructor below to ask while the first build runs
        return kit.engine

    monkeypatch.setattr(langchain_chat, "_ENGINES", {})
    monkeypatch.setattr(langchain_chat, "_build_engine", slow_build)
    models: list[EchoLMChatModel] = []

    def construct() -> None:
        models.append(EchoLMChatModel(tenant="default", tiers=[ScriptedTier(answer="a"), ScriptedTier(answer="b")]))

    threads = [threading.Thread(target=construct) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(model.wait_until_ready(5)) for model in models}) == 1 and len(builds) == 1
    other = default_settings(["small", "large"])
    EchoLMChatModel(tiers=[ScriptedTier(answer="a"), ScriptedTier(answer="b")], settings=other).wait_until_ready(5)
    assert builds == [builds[0], "small"]  # other settings, another engine


def test_streaming_true_makes_invoke_stream_from_the_tier(make_engine: EngineFactory) -> None:
    strong = ScriptedTier(answer=ANSWER)
    model = EchoLMChatModel(
        tenant="default", tiers=[ScriptedTier(answer="x"), strong], engine=make_engine().engine, streaming=True
    )
    runs = Runs()
    result = model.invoke(QUESTION, config={"callbacks": [runs]})
    assert result.content == ANSWER and _echolm(result)["tier"] == "strong"
    assert "".join(runs.tokens) == ANSWER and len(runs.tokens) > 1  # token by token, through our one run


def test_structured_output_by_response_format_sends_it_to_the_chosen_tier(door: Door) -> None:
    class City(BaseModel):
        name: str

    door.strong.answer = '{"name": "Paris"}'
    assert door.model.with_structured_output(City, method="json_schema").invoke(QUESTION) == City(name="Paris")
    sent = door.strong.call_arguments[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"]["properties"] == {"name": {"type": "string"}}
    raw = door.model.with_structured_output(City, method="json_mode", include_raw=True).invoke(QUESTION)
    assert raw["parsed"] == City(name="Paris") and raw["parsing_error"] is None
    assert door.strong.call_arguments[-1]["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("path", ["invoke", "stream"])
def test_a_tiers_own_rate_limiter_still_paces_its_calls(make_engine: EngineFactory, path: str) -> None:
    from langchain_core.rate_limiters import InMemoryRateLimiter

    class Counting(InMemoryRateLimiter):
        taken = 0

        def acquire(self, *, blocking: bool = True) -> bool:
            Counting.taken += 1
            return True

    strong = ScriptedTier(answer=ANSWER, rate_limiter=Counting(requests_per_second=100))
    model = EchoLMChatModel(tenant="default", tiers=[ScriptedTier(answer="x"), strong], engine=make_engine().engine)
    model.invoke(QUESTION) if path == "invoke" else list(model.stream(QUESTION))
    assert Counting.taken == 1
