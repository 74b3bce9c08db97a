"""LangChain's own standard tests (`langchain-tests`) on the LangChain door over the real engine (MiniLM,
embedded Chroma), in two classes:

- `TestEchoLMChatModelStandard`: the local llama.cpp tiers through ChatOpenAI, for every test a text
  model can pass. The tiers are named after their models (`qwen2.5-0.5b`, `qwen2.5-1.5b`) so that a call's
  `model=` names a tier as a provider's model name would, and the answer's `model_name` is the model that
  wrote it.
- `TestEchoLMChatModelScriptedTools`: scripted tiers that call tools, for the tool and structured-output
  tests the local tiers' server cannot pass (each reason below, measured on ChatOpenAI against that
  server alone, without us).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

from echolm_middleware.backends.minilm import MiniLMEmbedder
from echolm_middleware.config import Settings
from echolm_middleware.doors.langchain_chat import EchoLMChatModel
from echolm_middleware.factory import build_engine
from tests.integration.conftest import CHEAP, STRONG, LocalTiers, alias_of, settings_for_tests
from tests.unit.test_langchain_door import ScriptedTier

pytestmark = pytest.mark.integration

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _local_tier(local_tiers: LocalTiers, group: str) -> ChatOpenAI:
    (params,) = [e["litellm_params"] for e in local_tiers.model_list if e["model_name"] == group]
    return ChatOpenAI(
        base_url=params["api_base"],
        model=params["model"].split("/", 1)[-1],
        api_key="local",  # type: ignore[arg-type]
        temperature=0,
        # ChatOpenAI sends `max_tokens` as `max_completion_tokens`, which llama.cpp's server ignores.
        extra_body={"max_tokens": 48},
        stream_usage=True,
        max_retries=0,
        timeout=300,
    )


def _engine(settings: Settings, embedder: MiniLMEmbedder, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real engine on the session's MiniLM, its Chroma store and state in a folder of its own."""
    engine = build_engine(settings.stored_under(tmp_path_factory.mktemp("standard")), embedder=embedder)
    engine.warm_up()
    return engine


def _without_tier_settings(params: dict[str, Any]) -> dict[str, Any]:
    # `timeout` and `max_retries` are settings of each tier's own model; EchoLMChatModel refuses them
    # rather than drop them (tests/unit/test_langchain_door.py).
    return {name: value for name, value in params.items() if name not in ("timeout", "max_retries")}


class TestEchoLMChatModelStandard(ChatModelIntegrationTests):
    """On the local tiers. Not run here, each for a reason of the tiers' server (llama-cpp-python 0.3.36),
    seen with ChatOpenAI against it alone: tool calling and structured output (it repeats the function's
    name in every streamed tool-call delta, so LangChain's chunks add up to `magic_functionmagic_function...`;
    it rejects an assistant turn that carries tool calls with HTTP 500; it can force only a named function,
    so `tool_choice="any"` over several tools comes back as text): `TestEchoLMChatModelScriptedTools` runs
    those. Streamed usage: the server sends none in a stream. Images, audio, PDF and Anthropic-style
    inputs: the tiers take text only (the door passes non-text content through untouched). JSON mode and
    the VCR benchmark: not declared."""

    tiers: list[ChatOpenAI]
    engine: Any
    cheap_name: str

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _local_parts(
        cls, local_tiers: LocalTiers, embedder: MiniLMEmbedder, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        raw = {"model_list": local_tiers.model_list}
        names = {CHEAP: alias_of(CHEAP, raw), STRONG: alias_of(STRONG, raw)}
        base: Settings = settings_for_tests()
        renamed = tuple(tier.model_copy(update={"name": names[tier.name]}) for tier in base.tiers)
        cls.engine = _engine(base.model_copy(update={"tiers": renamed}), embedder, tmp_path_factory)
        cls.tiers = [_local_tier(local_tiers, CHEAP), _local_tier(local_tiers, STRONG)]
        cls.cheap_name = names[CHEAP]

    @property
    def chat_model_class(self) -> type[EchoLMChatModel]:
        return EchoLMChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"tiers": self.tiers, "engine": self.engine, "tenant": "standard-tests"}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return _without_tier_settings(super().standard_chat_model_params)

    @property
    def model_override_value(self) -> str:
        return self.cheap_name

    @property
    def has_tool_calling(self) -> bool:
        return False  # see the class's docstring: TestEchoLMChatModelScriptedTools

    @property
    def has_structured_output(self) -> bool:
        return False  # see the class's docstring: TestEchoLMChatModelScriptedTools

    @pytest.mark.xfail(
        reason="llama-cpp-python's server sends no usage in a stream (ChatOpenAI alone gets None)", strict=True
    )
    def test_usage_metadata_streaming(self, model: Any) -> None:
        super().test_usage_metadata_streaming(model)


class ToolCallingTier(ScriptedTier):
    """A scripted tier that calls tools: with tools bound, unless the last turn is a tool's result, it calls
    the forced tool (else the first) with arguments made from the tool's schema and the last user turn
    (numbers: the first number in it; strings: its text; booleans: true). Its text answers and streams
    are ScriptedTier's."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = _tool_call(messages, kwargs)
        if call is None:
            return super()._generate(messages, stop, run_manager, **kwargs)
        self.seen.append(list(messages))
        message = AIMessage(
            content="",
            tool_calls=[call],
            response_metadata={"finish_reason": "tool_calls", "model_name": self.model_name},
            usage_metadata=self._usage() or None,  # type: ignore[arg-type]
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Any:
        call = _tool_call(messages, kwargs)
        if call is None:
            yield from super()._stream(messages, stop, run_manager, **kwargs)
            return
        import json

        self.seen.append(list(messages))
        chunk = {"name": call["name"], "args": json.dumps(call["args"]), "id": call["id"], "index": 0}
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                tool_call_chunks=[chunk],  # type: ignore[list-item]
                response_metadata={"model_name": self.model_name},
                usage_metadata=self._usage() or None,  # type: ignore[arg-type]
            ),
            generation_info={"finish_reason": "tool_calls"},
        )


def _tool_call(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    tools = kwargs.get("tools") or []
    choice = kwargs.get("tool_choice")
    if not tools or choice == "none" or isinstance(messages[-1], ToolMessage):
        return None
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else choice
    by_name = {tool["function"]["name"]: tool["function"] for tool in tools}
    function = by_name.get(str(named)) or next(iter(by_name.values()))
    asked = next((str(m.content) for m in reversed(messages) if isinstance(m, HumanMessage)), "")
    number = NUMBER.search(asked)
    args = {}
    for name, schema in (function.get("parameters") or {}).get("properties", {}).items():
        kind = schema.get("type")
        if kind == "integer":
            args[name] = int(float(number.group())) if number else 0
        elif kind == "number":
            args[name] = float(number.group()) if number else 0.0
        elif kind == "boolean":
            args[name] = True
        elif kind in ("array", "object"):
            args[name] = [] if kind == "array" else {}
        else:
            args[name] = asked
    return {"name": function["name"], "args": args, "id": f"call-{function['name']}", "type": "tool_call"}


class TestEchoLMChatModelScriptedTools(ChatModelIntegrationTests):
    """On scripted tiers that call tools (above), with the real engine: every standard test, the tool and
    structured-output ones included. Images, audio, PDF and Anthropic-style inputs, JSON mode and the VCR
    benchmark: not declared (as for the local tiers)."""

    engine: Any

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _engine_part(cls, embedder: MiniLMEmbedder, tmp_path_factory: pytest.TempPathFactory) -> None:
        cls.engine = _engine(settings_for_tests(), embedder, tmp_path_factory)

    @property
    def chat_model_class(self) -> type[EchoLMChatModel]:
        return EchoLMChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        tiers = [
            ToolCallingTier(answer="A short answer from the cheap model.", model_name="cheap-model", usage=(9, 8)),
            ToolCallingTier(answer="A short answer from the strong model.", model_name="strong-model", usage=(9, 8)),
        ]
        return {"tiers": tiers, "engine": self.engine, "tenant": "standard-tests"}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return _without_tier_settings(super().standard_chat_model_params)

    @property
    def model_override_value(self) -> str:
        return CHEAP
