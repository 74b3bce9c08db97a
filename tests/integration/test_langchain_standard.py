"""LangChain's own standard tests (`langchain-tests`) on the LangChain door over the real parts: the local
llama.cpp tiers through ChatOpenAI, MiniLM and embedded Chroma.

The tiers are named after their models here (`qwen2.5-0.5b`, `qwen2.5-1.5b`), so a call's `model=` names a
tier the way a provider's model name would, and the answer's `model_name` is the model that wrote it.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

from echolm_middleware.backends.minilm import MiniLMEmbedder
from echolm_middleware.config import Settings
from echolm_middleware.doors.langchain_chat import EchoLMChatModel
from echolm_middleware.factory import build_engine
from tests.integration.conftest import CHEAP, STRONG, LocalTiers, alias_of, settings_for_tests

pytestmark = pytest.mark.integration


def _tier(local_tiers: LocalTiers, group: str) -> ChatOpenAI:
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


class TestEchoLMChatModelStandard(ChatModelIntegrationTests):
    tiers: list[ChatOpenAI]
    engine: Any

    @pytest.fixture(scope="class", autouse=True)
    def _local_parts(
        self,
        request: pytest.FixtureRequest,
        local_tiers: LocalTiers,
        embedder: MiniLMEmbedder,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> None:
        """One engine for the class on the session's MiniLM, its store and state in a folder of its own."""
        base: Settings = settings_for_tests().stored_under(tmp_path_factory.mktemp("standard"))
        raw = {"model_list": local_tiers.model_list}
        names = {CHEAP: alias_of(CHEAP, raw), STRONG: alias_of(STRONG, raw)}
        renamed = tuple(tier.model_copy(update={"name": names[tier.name]}) for tier in base.tiers)
        engine = build_engine(base.model_copy(update={"tiers": renamed}), embedder=embedder)
        engine.warm_up()
        request.cls.engine = engine
        request.cls.tiers = [_tier(local_tiers, CHEAP), _tier(local_tiers, STRONG)]
        request.cls.cheap_name = names[CHEAP]

    @property
    def chat_model_class(self) -> type[EchoLMChatModel]:
        return EchoLMChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"tiers": self.tiers, "engine": self.engine, "tenant": "standard-tests"}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # `timeout` and `max_retries` are settings of each tier's own model (above); EchoLMChatModel
        # refuses them rather than drop them (tests/unit/test_langchain_door.py).
        params = dict(super().standard_chat_model_params)
        del params["timeout"], params["max_retries"]
        return params

    @property
    def model_override_value(self) -> str:
        return str(self.cheap_name)
