"""The LangChain door: a chat model that answers on the cheapest good-enough tier, with cached examples.

    cheap = ChatOpenAI(base_url="http://127.0.0.1:8101/v1", model="qwen2.5-0.5b", api_key="local")
    strong = ChatOpenAI(base_url="http://127.0.0.1:8102/v1", model="qwen2.5-1.5b", api_key="local")
    model = EchoLMChatModel(tiers=[cheap, strong], tier_names=["cheap", "strong"])
    chain = prompt | model | StrOutputParser()

Each call goes through the shared engine (retrieve examples, augment, pick the tier), then to the
chosen tier's own chat model with this run's child callbacks, and its outcome is recorded. Requests
that offer tools pass through to the requested tier (the strongest by default) untouched: a tool turn
depends on tool state that no cached question/answer pair carries. If our part fails or runs out of
time, the request goes to the requested tier unchanged and the failure is counted and logged.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_messages
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from echolm_middleware.config import Settings, TierSettings
from echolm_middleware.core.engine import SHARED_TENANT, Engine
from echolm_middleware.core.generation_params import judged_params
from echolm_middleware.core.summary import DecisionSummary
from echolm_middleware.core.types import ChatRequest, Outcome, Prepared
from echolm_middleware.doors.access import (
    TENANT_KEY,
    EngineHandle,
    FailOpenCounter,
    arecord_within,
    prepare_or_fail_open,
    prepare_or_fail_open_sync,
    record_within,
    release_or_count,
    summary_of,
)

METADATA_KEY = "echolm"
# Finish reasons of providers that do not say "stop"/"length", in OpenAI's words.
_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "STOP": "stop"}


def _auto_names(tiers: Sequence[BaseChatModel]) -> list[str]:
    """Readable, unique tier names from the models themselves (model name, else class name)."""
    names = []
    for index, tier in enumerate(tiers):
        base = str(getattr(tier, "model_name", None) or getattr(tier, "model", None) or type(tier).__name__)
        names.append(base if base not in names else f"{base}#{index}")
    return names


def default_settings(names: Sequence[str]) -> Settings:
    """Settings for tiers given only as models: costs by rank, quality priors from 0.3 (cheapest) to 0.8."""
    last = max(1, len(names) - 1)
    return Settings(
        tiers=tuple(
            TierSettings(name=name, cost_per_1k_tokens=0.0, quality_prior=round(0.3 + 0.5 * index / last, 3))
            for index, name in enumerate(names)
        )
    )


def _finish_reason(message: BaseMessage) -> str | None:
    metadata = message.response_metadata or {}
    reason = metadata.get("finish_reason") or metadata.get("stop_reason")
    return None if reason is None else _FINISH_REASONS.get(str(reason), str(reason))


def _text(message: BaseMessage) -> str:
    return str(message.text)


@dataclass
class _Call:
    """One request after the engine: which tier runs it, on which messages, and what the caller sees."""

    runnable: Runnable[Any, Any]
    tier: str
    messages: list[BaseMessage]
    summary: DecisionSummary
    prepared: Prepared | None
    engine: Engine | None
    started: float
    # The request as the caller made it, for when the tier we chose fails before answering.
    requested: tuple[str, list[BaseMessage]] | None = None

    @property
    def records(self) -> bool:
        return self.engine is not None and self.prepared is not None and (self.prepared.routed or self.prepared.reused)


class EchoLMChatModel(BaseChatModel):
    """A LangChain chat model over several tiers (cheapest first) with EchoLM's in-context caching."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tiers: list[BaseChatModel] = Field(min_length=1, description="The tiers' chat models, cheapest first.")
    tier_names: list[str] | None = Field(
        default=None, description="Names of the tiers in decisions; default: from `settings`, else the models."
    )
    settings: Settings | None = Field(
        default=None, description="EchoLM settings; their `tiers` name the models in order. Default: built-in."
    )
    engine: Engine | None = Field(default=None, description="A prebuilt engine to share (else built from settings).")
    tenant: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Namespace of examples and decisions (a call's metadata `echolm_tenant` wins). None: calls that"
            " name no tenant pass through untouched, unless the settings share one cache (tenancy.shared)."
        ),
    )
    requested_tier: str | None = Field(
        default=None, description="The tier a request names (pass-throughs go there); default: the strongest."
    )
    startup_wait_s: float = Field(default=30.0, gt=0, description="How long a call waits for the engine's build.")
    # LangChain's own cache would answer before any tier is chosen and nothing would be recorded.
    cache: bool | None = False

    _handle: EngineHandle = PrivateAttr()
    _counter: FailOpenCounter = PrivateAttr(default_factory=FailOpenCounter)
    _bound_tools: tuple[Sequence[Any], dict[str, Any]] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve_tiers(self) -> EchoLMChatModel:
        if self.engine is not None:
            names = [tier.name for tier in self.engine.tiers]
        elif self.settings is not None:
            names = [tier.name for tier in self.settings.tiers]
        else:
            names = self.tier_names or _auto_names(self.tiers)
        if self.tier_names is not None and self.tier_names != names:
            raise ValueError(f"tier_names {self.tier_names} differ from the configured tiers {names}")
        if len(names) != len(self.tiers) or len(set(names)) != len(names):
            raise ValueError(f"need one unique name per tier model: {len(self.tiers)} models, names {names}")
        self.tier_names = names
        if self.requested_tier is not None and self.requested_tier not in names:
            raise ValueError(f"requested_tier {self.requested_tier!r} is not one of the tiers {names}")
        if self.engine is not None:
            engine = self.engine
            self._handle = EngineHandle(lambda: engine)
        else:
            settings = self.settings or default_settings(names)
            self._handle = EngineHandle(lambda: _build_engine(settings))
        self._handle.start()
        return self

    @property
    def _llm_type(self) -> str:
        return "echolm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"tiers": self.tier_names, "tenant": self.tenant}

    # ---- the public extras ----------------------------------------------------------------------

    @property
    def fail_open_counts(self) -> dict[str, int]:
        return dict(self._counter.counts)

    def wait_until_ready(self, timeout_s: float = 120.0) -> Engine:
        """Block until the engine is built (the embedder loaded); raises its build error, if any."""
        engine: Engine = self._handle.get_sync(timeout_s)
        return engine

    def feedback(self, request_id: str, score: float, *, tenant: str | None = None) -> None:
        """A quality score (0-1) for a past response, by the request id in its `response_metadata`.

        `tenant`: the one the request was made for, when it came in the call's metadata rather than
        from this model's `tenant`; another tenant's request id is unknown here."""
        named = tenant or self.tenant or SHARED_TENANT  # a request that named none can only be the shared one's
        self.wait_until_ready(self.startup_wait_s).feedback(request_id, score, tenant=named)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        """Bind tools to every tier; such requests pass through to the requested tier untouched."""
        if tool_choice == "any" and len(tools) == 1:
            # "Call one of these tools" with one tool is "call this tool"; servers that can force only
            # a named function (llama.cpp's) then honour it, which `with_structured_output` relies on.
            tool_choice = convert_to_openai_tool(tools[0])["function"]["name"]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        bound = self.model_copy()
        bound._bound_tools = (list(tools), kwargs)
        return bound

    # ---- one request ----------------------------------------------------------------------------

    def _request(
        self, messages: list[BaseMessage], metadata: Mapping[str, Any] | None, params: Mapping[str, Any]
    ) -> ChatRequest:
        tenant = (metadata or {}).get(TENANT_KEY) or self.tenant or ""
        return ChatRequest(
            tenant=str(tenant),
            model=self.requested_tier or (self.tier_names or [])[-1],
            messages=convert_to_openai_messages(messages),
            has_tools=self._bound_tools is not None,
            params=params,
        )

    def _timeout_s(self) -> float:
        engine = self._handle.ready()
        return engine.settings.requests.timeout_ms / 1000 if engine else self.startup_wait_s

    def _tier(self, name: str) -> Runnable[Any, Any]:
        model = self.tiers[(self.tier_names or []).index(name)]
        if self._bound_tools is None:
            return model
        tools, kwargs = self._bound_tools
        return model.bind_tools(tools, **kwargs)

    def _call_for(
        self, messages: list[BaseMessage], request: ChatRequest, prepared: Prepared | None, engine: Engine | None
    ) -> _Call:
        started = time.perf_counter()
        summary = summary_of(request, prepared)
        if prepared is None or engine is None:
            return _Call(self._tier(request.model), request.model, messages, summary, None, None, started)
        if prepared.reused_answer is not None:
            cached = _cached_answer(prepared.reused_answer, prepared.reused_usage)
            return _Call(cached, request.model, messages, summary, prepared, engine, started)
        requested = None
        if prepared.routed and (prepared.tier != request.model or prepared.decision.examples):
            requested = (request.model, messages)
        if prepared.decision.examples:
            messages = convert_to_messages(prepared.messages)
        return _Call(self._tier(prepared.tier), prepared.tier, messages, summary, prepared, engine, started, requested)

    def _after_failure(self, call: _Call, exc: Exception) -> _Call:
        """The tier we chose failed before answering: the request goes as the caller made it to the tier it
        named (fail open). A failure of the tier the caller named is theirs, and is raised."""
        if call.requested is None:
            raise exc
        self._release(call)
        self._counter.add(f"chosen tier failed: {call.tier}", exc)
        tier, messages = call.requested
        return _Call(self._tier(tier), tier, messages, call.summary.chosen_tier_failed(tier), None, None, call.started)

    def _prepare(
        self, messages: list[BaseMessage], run_manager: CallbackManagerForLLMRun | None, params: Mapping[str, Any]
    ) -> _Call:
        started = time.perf_counter()
        request = self._request(messages, run_manager.metadata if run_manager else None, params)
        prepared, engine = prepare_or_fail_open_sync(self._handle, self._counter, self._timeout_s(), request)
        call = self._call_for(messages, request, prepared, engine)
        call.summary = call.summary.with_overhead((time.perf_counter() - started) * 1000)
        return call

    async def _aprepare(
        self, messages: list[BaseMessage], run_manager: AsyncCallbackManagerForLLMRun | None, params: Mapping[str, Any]
    ) -> _Call:
        started = time.perf_counter()
        request = self._request(messages, run_manager.metadata if run_manager else None, params)
        prepared, engine = await prepare_or_fail_open(self._handle, self._counter, self._timeout_s(), request)
        call = self._call_for(messages, request, prepared, engine)
        call.summary = call.summary.with_overhead((time.perf_counter() - started) * 1000)
        return call

    def _outcome(self, call: _Call, answer: str, finish_reason: str | None) -> Outcome | None:
        if not call.records or call.prepared is None:
            return None
        return Outcome(
            request_id=call.prepared.decision.request_id,
            served_by=call.tier,
            answer=answer,
            finish_reason=finish_reason,
            latency_s=time.perf_counter() - call.started,
        )

    def _record(self, call: _Call, answer: str, finish_reason: str | None) -> None:
        outcome = self._outcome(call, answer, finish_reason)
        if outcome is not None and call.engine is not None:
            record_within(call.engine, outcome, self._counter, self._timeout_s())

    async def _arecord(self, call: _Call, answer: str, finish_reason: str | None) -> None:
        outcome = self._outcome(call, answer, finish_reason)
        if outcome is not None and call.engine is not None:
            await arecord_within(call.engine, outcome, self._counter, self._timeout_s())

    def _release(self, call: _Call) -> None:
        """The call ends without an outcome (the tier failed, the caller cancelled or stopped reading)."""
        if call.records and call.engine is not None and call.prepared is not None:
            release_or_count(call.engine, call.prepared.decision.request_id, self._counter)

    @staticmethod
    def _result(message: Any, summary: DecisionSummary) -> ChatResult:
        if not isinstance(message, BaseMessage):
            message = AIMessage(content=str(message))
        message.response_metadata = {**(message.response_metadata or {}), METADATA_KEY: summary.caller_view()}
        return ChatResult(generations=[ChatGeneration(message=message)])

    @staticmethod
    def _config(run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None) -> RunnableConfig:
        return RunnableConfig(callbacks=_child_callbacks(run_manager)) if run_manager else RunnableConfig()

    # ---- LangChain's four paths -----------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, run_manager, judged_params({"stop": stop, **kwargs}))
        try:
            try:
                message = call.runnable.invoke(call.messages, self._config(run_manager), stop=stop, **kwargs)
            except Exception as exc:
                call = self._after_failure(call, exc)
                message = call.runnable.invoke(call.messages, self._config(run_manager), stop=stop, **kwargs)
        except BaseException:
            self._release(call)
            raise
        self._record(call, _text(message), _finish_reason(message))  # which also ends the call's load
        return self._result(message, call.summary)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = await self._aprepare(messages, run_manager, judged_params({"stop": stop, **kwargs}))
        try:
            try:
                message = await call.runnable.ainvoke(call.messages, self._config(run_manager), stop=stop, **kwargs)
            except Exception as exc:
                call = self._after_failure(call, exc)
                message = await call.runnable.ainvoke(call.messages, self._config(run_manager), stop=stop, **kwargs)
        except BaseException:  # cancellation included: the tier's load must not wait for a timeout
            self._release(call)
            raise
        await self._arecord(call, _text(message), _finish_reason(message))
        return self._result(message, call.summary)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, run_manager, judged_params({"stop": stop, **kwargs}))
        assembled = _Assembler(call.summary)
        try:
            try:
                for chunk in call.runnable.stream(call.messages, self._config(run_manager), stop=stop, **kwargs):
                    yield assembled.add(chunk)
            except Exception as exc:
                if assembled.started:  # the caller has read part of this answer; another cannot follow it
                    raise
                call = self._after_failure(call, exc)
                assembled = _Assembler(call.summary)
                for chunk in call.runnable.stream(call.messages, self._config(run_manager), stop=stop, **kwargs):
                    yield assembled.add(chunk)
        except BaseException:  # GeneratorExit included: the caller stopped reading
            self._release(call)
            raise
        # Only a stream that ran to its end is recorded, once, with the whole answer.
        self._record(call, assembled.text, assembled.finish_reason)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = await self._aprepare(messages, run_manager, judged_params({"stop": stop, **kwargs}))
        assembled = _Assembler(call.summary)
        try:
            try:
                async for chunk in call.runnable.astream(call.messages, self._config(run_manager), stop=stop, **kwargs):
                    yield assembled.add(chunk)
            except Exception as exc:
                if assembled.started:  # the caller has read part of this answer; another cannot follow it
                    raise
                call = self._after_failure(call, exc)
                assembled = _Assembler(call.summary)
                async for chunk in call.runnable.astream(call.messages, self._config(run_manager), stop=stop, **kwargs):
                    yield assembled.add(chunk)
        except BaseException:  # cancellation or GeneratorExit: the caller hung up
            self._release(call)
            raise
        await self._arecord(call, assembled.text, assembled.finish_reason)


def _cached_answer(answer: str, usage: tuple[int, int]) -> Runnable[Any, Any]:
    """A cached answer in place of a tier: the reuse choice calls no model."""
    from langchain_core.runnables import RunnableLambda

    prompt, completion = usage
    message = AIMessage(
        content=answer,
        response_metadata={"finish_reason": "stop"},
        usage_metadata={"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion},
    )

    def cached(_: Any, **__: Any) -> AIMessage:
        return message.model_copy()

    return RunnableLambda(cached, name="echolm_cached_answer")


class _Assembler:
    """Collects a stream's text and finish reason; the first chunk carries the decision."""

    def __init__(self, summary: DecisionSummary) -> None:
        self._summary: DecisionSummary | None = summary
        self._parts: list[str] = []
        self.finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def started(self) -> bool:
        return self._summary is None

    def add(self, chunk: Any) -> ChatGenerationChunk:
        if isinstance(chunk, AIMessage) and not isinstance(chunk, AIMessageChunk):
            # A whole message (a cached answer): its finish reason and usage are kept.
            chunk = AIMessageChunk(
                content=chunk.content, response_metadata=chunk.response_metadata, usage_metadata=chunk.usage_metadata
            )
        elif not isinstance(chunk, AIMessageChunk):
            chunk = AIMessageChunk(content=chunk.content if isinstance(chunk, BaseMessage) else str(chunk))
        self._parts.append(_text(chunk))
        self.finish_reason = _finish_reason(chunk) or self.finish_reason
        if self._summary is not None:
            chunk = chunk.model_copy(
                update={
                    "response_metadata": {**(chunk.response_metadata or {}), METADATA_KEY: self._summary.caller_view()}
                }
            )
            self._summary = None
        return ChatGenerationChunk(message=chunk)


def _child_callbacks(
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun,
) -> CallbackManager | AsyncCallbackManager:
    """The tier's call as a child of ours. LLM run managers have no `get_child()`; this builds what
    a chain run's `get_child()` would: our inheritable handlers, tags and metadata, our run as parent."""
    manager_class = AsyncCallbackManager if isinstance(run_manager, AsyncCallbackManagerForLLMRun) else CallbackManager
    manager = manager_class(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    return manager


def _build_engine(settings: Settings) -> Engine:
    from echolm_middleware.factory import build_engine

    engine = build_engine(settings)
    engine.warm_up()
    return engine
