"""The LangChain door: a chat model that answers on the cheapest good-enough tier, with cached examples.

    cheap = ChatOpenAI(base_url="http://127.0.0.1:8101/v1", model="qwen2.5-0.5b", api_key="local")
    strong = ChatOpenAI(base_url="http://127.0.0.1:8102/v1", model="qwen2.5-1.5b", api_key="local")
    model = EchoLMChatModel(tiers=[cheap, strong], tier_names=["cheap", "strong"])
    chain = prompt | model | StrOutputParser()

Each call goes through the shared engine (retrieve examples, augment, pick the tier), then to the
chosen tier's own chat model, and its outcome is recorded. The call is one LangChain run: the tier is
driven through its model methods (`_generate`, `_stream`) under our run, so callbacks, tracing and
usage see one call with one usage record, not ours and the tier's. Requests that offer tools pass
through to the requested tier (the strongest by default) untouched: a tool turn depends on tool state
that no cached question/answer pair carries. If our part fails or runs out of time, the request goes to
the requested tier unchanged and the failure is counted and logged.

Instances with the same settings share one engine (one embedder, one store client), built once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_messages
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

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
    note_tier_failure,
    prepare_or_fail_open,
    prepare_or_fail_open_sync,
    record_within,
    release_or_count,
    summary_of,
)

METADATA_KEY = "echolm"
# Finish reasons of providers that do not say "stop"/"length", in OpenAI's words.
_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "STOP": "stop"}
# Settings that belong to each tier's own chat model: taking them here would mean dropping them.
_TIER_SETTINGS = ("api_key", "base_url", "timeout", "max_retries", "organization", "default_headers")
# Call arguments `bind_tools` adds (and `_generate` takes back out) to bind the tools on the chosen tier.
_TOOL_ARGUMENTS = ("tools", "tool_choice", "tool_options")


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


# One engine per distinct settings in a process: each holds an embedder (about 100 MB) and a store client,
# and several engines opening one embedded Chroma path at once race on its tenant set-up.
_ENGINES: dict[str, EngineHandle] = {}
_ENGINES_LOCK = threading.Lock()
_BUILD_LOCK = threading.Lock()  # builds one at a time: two stores opening one path at once is that race


def shared_engine(settings: Settings) -> EngineHandle:
    """The process's engine for these settings, built once in the background and shared by every model."""
    key = settings.model_dump_json()
    with _ENGINES_LOCK:
        handle = _ENGINES.get(key)
        if handle is None:
            handle = _ENGINES[key] = EngineHandle(lambda: _build_engine(settings))
    handle.start()
    return handle


def _finish_reason(message: BaseMessage) -> str | None:
    metadata = message.response_metadata or {}
    reason = metadata.get("finish_reason") or metadata.get("stop_reason")
    return None if reason is None else _FINISH_REASONS.get(str(reason), str(reason))


def _text(message: BaseMessage) -> str:
    return str(message.text)


@dataclass
class _Tier:
    """A tier's chat model with the call arguments bound on it (tools), or a cached answer in its place."""

    model: BaseChatModel | None
    bound: dict[str, Any] = field(default_factory=dict)
    cached: AIMessage | None = None


@dataclass
class _Call:
    """One request after the engine: which tier runs it, on which messages, and what the caller sees."""

    tier_call: _Tier
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


@dataclass
class _Arguments:
    """A call's arguments sorted: the tier it names, the tools to bind, and what goes on to the tier."""

    model: str
    stop: list[str] | None
    tools: tuple[list[Any], dict[str, Any]] | None
    forwarded: dict[str, Any]

    @property
    def judged(self) -> dict[str, Any]:
        return judged_params({"stop": self.stop, **self.forwarded})


class EchoLMChatModel(BaseChatModel):
    """A LangChain chat model over several tiers (cheapest first) with EchoLM's in-context caching."""

    # Unknown settings raise instead of vanishing; `model=` is the name a request asks for.
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    tiers: list[BaseChatModel] = Field(min_length=1, description="The tiers' chat models, cheapest first.")
    tier_names: list[str] | None = Field(
        default=None, description="Names of the tiers in decisions; default: from `settings`, else the models."
    )
    settings: Settings | None = Field(
        default=None, description="EchoLM settings; their `tiers` name the models in order. Default: built-in."
    )
    engine: Engine | None = Field(
        default=None,
        description="A prebuilt engine to use. Default: the process's engine for `settings`, shared by every "
        "EchoLMChatModel with the same settings.",
    )
    tenant: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Namespace of examples and decisions (a call's metadata `echolm_tenant` wins). None: calls that"
            " name no tenant pass through untouched, unless the settings share one cache (tenancy.shared)."
        ),
    )
    requested_tier: str | None = Field(
        default=None,
        alias="model",
        description="The tier a request names (`model=`; pass-throughs go there); default: the strongest. A "
        "call's `model=` names another.",
    )
    temperature: float | None = Field(default=None, description="Sent to the chosen tier (unless a call sets one).")
    max_tokens: int | None = Field(default=None, gt=0, description="Sent to the chosen tier (unless a call sets one).")
    stop: list[str] | None = Field(
        default=None, description="Stop sequences sent to the chosen tier (unless a call's)."
    )
    streaming: bool = Field(default=False, description="`invoke` streams from the tier (tokens reach callbacks).")
    startup_wait_s: float = Field(default=30.0, gt=0, description="How long a call waits for the engine's build.")
    # LangChain's own cache would answer before any tier is chosen and nothing would be recorded.
    cache: bool | None = False

    _handle: EngineHandle = PrivateAttr()
    _counter: FailOpenCounter = PrivateAttr(default_factory=FailOpenCounter)

    @model_validator(mode="before")
    @classmethod
    def _refuse_tier_settings(cls, values: Any) -> Any:
        if isinstance(values, Mapping):
            for name in _TIER_SETTINGS:
                if name in values:
                    raise ValueError(
                        f"EchoLMChatModel does not take {name!r}: it is a setting of each tier's own chat model;"
                        " set it on the models in `tiers=`"
                    )
        return values

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
            raise ValueError(f"model {self.requested_tier!r} is not one of the tiers {names}")
        if self.engine is not None:
            engine = self.engine
            self._handle = EngineHandle(lambda: engine)
            self._handle.start()
        else:
            self._handle = shared_engine(self.settings or default_settings(names))
        return self

    @property
    def _llm_type(self) -> str:
        return "echolm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"tiers": self.tier_names, "tenant": self.tenant, "model": self._requested(None)}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """Tracing's standard parameters: the tier the call names as the model (a call's `model=` wins)."""
        named = kwargs.get("model") if isinstance(kwargs.get("model"), str) else None  # reported even if unknown
        params = LangSmithParams(ls_provider="echolm", ls_model_name=named or self._requested(None))
        params["ls_model_type"] = "chat"
        temperature = kwargs.get("temperature", self.temperature)
        if isinstance(temperature, int | float):
            params["ls_temperature"] = float(temperature)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if isinstance(max_tokens, int):
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

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
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools for the tier that answers; such requests pass through to the requested tier untouched.

        The tools are bound with the chosen tier's own `bind_tools`, with `tool_choice` and any other
        keyword (e.g. `strict`, `parallel_tool_calls`)."""
        structured_format = kwargs.pop("ls_structured_output_format", None)
        formatted = [convert_to_openai_tool(tool, strict=kwargs.get("strict")) for tool in tools]
        if tool_choice == "any" and len(formatted) == 1:
            # "Call one of these tools" with one tool is "call this tool"; servers that can force only
            # a named function (llama.cpp's) then honour it, which `with_structured_output` relies on.
            tool_choice = formatted[0]["function"]["name"]
        bound: dict[str, Any] = {"tools": formatted, "tool_options": kwargs}
        if tool_choice is not None:
            bound["tool_choice"] = tool_choice
        if structured_format is not None:  # LangChain takes it back out for tracing before `_generate`
            bound["ls_structured_output_format"] = structured_format
        return self.bind(**bound)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Structured output by the tier's tools (`function_calling`, through `bind_tools`) or by its
        `response_format` (`json_schema`, `json_mode`), which the chosen tier is sent as it is."""
        if kwargs:
            raise ValueError(f"with_structured_output got unsupported arguments {sorted(kwargs)}")
        if method == "function_calling":
            if strict is None:
                return super().with_structured_output(schema, include_raw=include_raw)
            tool_name = convert_to_openai_tool(schema)["function"]["name"]
            tool_model = self.bind_tools([schema], tool_choice="any", strict=strict)
            return _with_parser(tool_model, _tool_parser(schema, tool_name), include_raw)
        if method not in ("json_schema", "json_mode"):
            raise ValueError(f"method {method!r}: one of function_calling, json_schema, json_mode")
        pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        parser: Runnable[Any, Any] = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()  # type: ignore[arg-type]
        if method == "json_mode":
            response_format: dict[str, Any] = {"type": "json_object"}
        else:
            json_schema = convert_to_json_schema(schema)
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": json_schema.get("title", "output"), "schema": json_schema,
                                **({} if strict is None else {"strict": strict})},
            }  # fmt: skip
        return _with_parser(self.bind(response_format=response_format), parser, include_raw)

    # ---- one request ----------------------------------------------------------------------------

    def _requested(self, model: Any) -> str:
        names = self.tier_names or []
        if model is not None and model not in names:
            raise ValueError(f"model {model!r} is not one of the tiers {names}")
        return str(model or self.requested_tier or names[-1])

    def _arguments(self, stop: list[str] | None, kwargs: Mapping[str, Any]) -> _Arguments:
        """A call's `model=` names a tier; this model's own `temperature`/`max_tokens`/`stop` fill in what
        the call does not set; the rest goes to the tier as the call gave it."""
        forwarded = {name: value for name, value in kwargs.items() if name not in ("model", *_TOOL_ARGUMENTS)}
        for name in ("temperature", "max_tokens"):
            if getattr(self, name) is not None:
                forwarded.setdefault(name, getattr(self, name))
        tools = None
        if "tools" in kwargs:
            options = dict(kwargs.get("tool_options") or {})
            if kwargs.get("tool_choice") is not None:
                options["tool_choice"] = kwargs["tool_choice"]
            tools = (list(kwargs["tools"]), options)
        return _Arguments(self._requested(kwargs.get("model")), stop if stop is not None else (self.stop or None),
                          tools, forwarded)  # fmt: skip

    def _request(
        self, messages: list[BaseMessage], metadata: Mapping[str, Any] | None, args: _Arguments
    ) -> ChatRequest:
        tenant = (metadata or {}).get(TENANT_KEY) or self.tenant or ""
        return ChatRequest(
            tenant=str(tenant),
            model=args.model,
            messages=convert_to_openai_messages(messages),
            has_tools=args.tools is not None,
            params=args.judged,
        )

    def _timeout_s(self) -> float:
        engine = self._handle.ready()
        return engine.settings.requests.timeout_ms / 1000 if engine else self.startup_wait_s

    def _tier(self, name: str, args: _Arguments) -> _Tier:
        model = self.tiers[(self.tier_names or []).index(name)]
        if args.tools is None:
            return _Tier(model)
        tools, options = args.tools
        return _unbound(model.bind_tools(tools, **options))

    def _call_for(
        self,
        messages: list[BaseMessage],
        request: ChatRequest,
        args: _Arguments,
        prepared: Prepared | None,
        engine: Engine | None,
    ) -> _Call:
        started = time.perf_counter()
        summary = summary_of(request, prepared)
        if prepared is None or engine is None:
            return _Call(self._tier(request.model, args), request.model, messages, summary, None, None, started)
        if prepared.reused_answer is not None:
            cached = _Tier(None, cached=_cached_answer(prepared.reused_answer, prepared.reused_usage, prepared.tier))
            return _Call(cached, request.model, messages, summary, prepared, engine, started)
        requested = None
        if prepared.routed and (prepared.tier != request.model or prepared.decision.examples):
            requested = (request.model, messages)
        if prepared.decision.examples:
            messages = convert_to_messages(prepared.messages)
        tier = self._tier(prepared.tier, args)
        return _Call(tier, prepared.tier, messages, summary, prepared, engine, started, requested)

    def _after_failure(self, call: _Call, args: _Arguments, exc: Exception) -> _Call:
        """The tier we chose failed before answering: the request goes as the caller made it to the tier it
        named (fail open). A failure of the tier the caller named is theirs, and is raised. Either way, where
        the error says the tier is failing, the router leaves it out for a while."""
        if call.engine is not None and call.prepared is not None and call.prepared.routed:
            note_tier_failure(call.engine, call.tier, exc, self._counter)
        if call.requested is None:
            raise exc
        self._release(call)
        self._counter.add(f"chosen tier failed: {call.tier}", exc)
        tier, messages = call.requested
        summary = call.summary.chosen_tier_failed(tier)
        return _Call(self._tier(tier, args), tier, messages, summary, None, None, call.started)

    def _prepare(
        self, messages: list[BaseMessage], run_manager: CallbackManagerForLLMRun | None, args: _Arguments
    ) -> _Call:
        started = time.perf_counter()
        request = self._request(messages, run_manager.metadata if run_manager else None, args)
        prepared, engine = prepare_or_fail_open_sync(self._handle, self._counter, self._timeout_s(), request)
        call = self._call_for(messages, request, args, prepared, engine)
        call.summary = call.summary.with_overhead((time.perf_counter() - started) * 1000)
        return call

    async def _aprepare(
        self, messages: list[BaseMessage], run_manager: AsyncCallbackManagerForLLMRun | None, args: _Arguments
    ) -> _Call:
        started = time.perf_counter()
        request = self._request(messages, run_manager.metadata if run_manager else None, args)
        prepared, engine = await prepare_or_fail_open(self._handle, self._counter, self._timeout_s(), request)
        call = self._call_for(messages, request, args, prepared, engine)
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
    def _result(result: ChatResult, summary: DecisionSummary) -> ChatResult:
        generation = result.generations[0]
        message = generation.message
        message.response_metadata = {**(message.response_metadata or {}), METADATA_KEY: summary.caller_view()}
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=generation.generation_info)],
            llm_output=result.llm_output,
        )

    # ---- LangChain's four paths -----------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        args = self._arguments(stop, kwargs)
        call = self._prepare(messages, run_manager, args)
        try:
            try:
                result = _generate_on(call.tier_call, call.messages, args, run_manager)
            except Exception as exc:
                call = self._after_failure(call, args, exc)
                result = _generate_on(call.tier_call, call.messages, args, run_manager)
        except BaseException:
            self._release(call)
            raise
        message = result.generations[0].message
        self._record(call, _text(message), _finish_reason(message))  # which also ends the call's load
        return self._result(result, call.summary)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        args = self._arguments(stop, kwargs)
        call = await self._aprepare(messages, run_manager, args)
        try:
            try:
                result = await _agenerate_on(call.tier_call, call.messages, args, run_manager)
            except Exception as exc:
                call = self._after_failure(call, args, exc)
                result = await _agenerate_on(call.tier_call, call.messages, args, run_manager)
        except BaseException:  # cancellation included: the tier's load must not wait for a timeout
            self._release(call)
            raise
        message = result.generations[0].message
        await self._arecord(call, _text(message), _finish_reason(message))
        return self._result(result, call.summary)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        args = self._arguments(stop, kwargs)
        call = self._prepare(messages, run_manager, args)
        assembled = _Assembler(call.summary)
        try:
            try:
                for chunk in _stream_on(call.tier_call, call.messages, args):
                    yield assembled.add(chunk)
            except Exception as exc:
                if assembled.started:  # the caller has read part of this answer; another cannot follow it
                    raise
                call = self._after_failure(call, args, exc)
                assembled = _Assembler(call.summary)
                for chunk in _stream_on(call.tier_call, call.messages, args):
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
        args = self._arguments(stop, kwargs)
        call = await self._aprepare(messages, run_manager, args)
        assembled = _Assembler(call.summary)
        try:
            try:
                async for chunk in _astream_on(call.tier_call, call.messages, args):
                    yield assembled.add(chunk)
            except Exception as exc:
                if assembled.started:  # the caller has read part of this answer; another cannot follow it
                    raise
                call = self._after_failure(call, args, exc)
                assembled = _Assembler(call.summary)
                async for chunk in _astream_on(call.tier_call, call.messages, args):
                    yield assembled.add(chunk)
        except BaseException:  # cancellation or GeneratorExit: the caller hung up
            self._release(call)
            raise
        await self._arecord(call, assembled.text, assembled.finish_reason)


# ---- driving a tier inside our run ------------------------------------------------------------------
# The tier's model methods, not its `invoke`: `invoke` would open a second run with its own callbacks
# (every usage handler would count the call twice). LangChain's `_generate_with_cache` keeps what a tier's
# `invoke` would add around `_generate`: its rate limiter, its own streaming choice, its metadata.


def _unbound(runnable: Runnable[Any, Any]) -> _Tier:
    """A tier's `bind_tools` result taken apart: the chat model and the arguments bound on it."""
    bound: dict[str, Any] = {}
    while isinstance(runnable, RunnableBinding):
        bound = {**runnable.kwargs, **bound}
        runnable = runnable.bound
    if not isinstance(runnable, BaseChatModel):
        raise TypeError(f"a tier's bind_tools returned {type(runnable).__name__}, not a bound chat model")
    return _Tier(runnable, bound)


def _tier_kwargs(tier: _Tier, args: _Arguments) -> dict[str, Any]:
    return {**tier.bound, **args.forwarded}


def _generate_on(
    tier: _Tier, messages: list[BaseMessage], args: _Arguments, run_manager: CallbackManagerForLLMRun | None
) -> ChatResult:
    if tier.model is None:
        return ChatResult(generations=[ChatGeneration(message=_copy(tier.cached))])
    return tier.model._generate_with_cache(
        messages, stop=args.stop, run_manager=run_manager, **_tier_kwargs(tier, args)
    )


async def _agenerate_on(
    tier: _Tier, messages: list[BaseMessage], args: _Arguments, run_manager: AsyncCallbackManagerForLLMRun | None
) -> ChatResult:
    if tier.model is None:
        return ChatResult(generations=[ChatGeneration(message=_copy(tier.cached))])
    return await tier.model._agenerate_with_cache(
        messages, stop=args.stop, run_manager=run_manager, **_tier_kwargs(tier, args)
    )


def _streams(model: BaseChatModel, kwargs: Mapping[str, Any], *, async_api: bool) -> bool:
    """Whether the tier can stream this call (as LangChain's `stream` decides), else it answers whole."""
    implemented = type(model)._stream is not BaseChatModel._stream or (
        async_api and type(model)._astream is not BaseChatModel._astream
    )
    disabled = model.disable_streaming is True or (
        model.disable_streaming == "tool_calling" and bool(kwargs.get("tools"))
    )
    return implemented and not disabled


def _stream_on(tier: _Tier, messages: list[BaseMessage], args: _Arguments) -> Iterator[BaseMessage]:
    kwargs = _tier_kwargs(tier, args)
    if tier.model is None or not _streams(tier.model, kwargs, async_api=False):
        yield _generate_on(tier, messages, args, None).generations[0].message
        return
    if tier.model.rate_limiter:  # as the tier's own `stream` would
        tier.model.rate_limiter.acquire(blocking=True)
    for chunk in tier.model._stream(messages, stop=args.stop, **kwargs):
        yield _with_generation_info(chunk)


async def _astream_on(tier: _Tier, messages: list[BaseMessage], args: _Arguments) -> AsyncIterator[BaseMessage]:
    kwargs = _tier_kwargs(tier, args)
    if tier.model is None or not _streams(tier.model, kwargs, async_api=True):
        yield (await _agenerate_on(tier, messages, args, None)).generations[0].message
        return
    if tier.model.rate_limiter:
        await tier.model.rate_limiter.aacquire(blocking=True)
    async for chunk in tier.model._astream(messages, stop=args.stop, **kwargs):
        yield _with_generation_info(chunk)


def _with_generation_info(chunk: ChatGenerationChunk) -> BaseMessage:
    """A chunk's message with its generation info (where OpenAI-style tiers put the finish reason) in its
    response metadata, as LangChain's `stream` merges them."""
    message = chunk.message
    if chunk.generation_info:
        message.response_metadata = {**chunk.generation_info, **(message.response_metadata or {})}
    return message


def _copy(message: AIMessage | None) -> AIMessage:
    assert message is not None
    return message.model_copy()


def _cached_answer(answer: str, usage: tuple[int, int], model_name: str) -> AIMessage:
    """A cached answer in place of a tier: the reuse choice calls no model. `model_name`: what the decision
    names as having answered (`routing.reuse.model_group`, else the model asked for), which LangChain's usage
    callbacks key their counts by."""
    prompt, completion = usage
    return AIMessage(
        content=answer,
        response_metadata={"finish_reason": "stop", "model_name": model_name},
        usage_metadata={"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion},
    )


def _tool_parser(schema: dict[str, Any] | type, tool_name: str) -> Runnable[Any, Any]:
    from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser

    if isinstance(schema, type) and is_basemodel_subclass(schema):
        return PydanticToolsParser(tools=[schema], first_tool_only=True)
    return JsonOutputKeyToolsParser(key_name=tool_name, first_tool_only=True)


def _with_parser(
    model: Runnable[Any, Any], parser: Runnable[Any, Any], include_raw: bool
) -> Runnable[LanguageModelInput, Any]:
    """`with_structured_output`'s shape: the parsed value, or {raw, parsed, parsing_error} with include_raw."""
    if not include_raw:
        return model | parser
    parsed = RunnablePassthrough.assign(parsed=lambda x: parser.invoke(x["raw"]), parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=model) | parsed.with_fallbacks([failed], exception_key="parsing_error")


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


def _build_engine(settings: Settings) -> Engine:
    from echolm_middleware.factory import build_engine

    with _BUILD_LOCK:
        engine = build_engine(settings)
    engine.warm_up()
    return engine
