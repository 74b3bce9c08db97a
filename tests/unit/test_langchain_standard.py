"""LangChain's own standard unit tests (`langchain-tests`) on the LangChain door: construction, standard
parameters, tool binding and structured output, over scripted tiers and the fake engine parts.

The integration class (the real tiers, MiniLM, Chroma) is tests/integration/test_langchain_standard.py.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from echolm_middleware.backends.memory_store import InMemoryExampleStore
from echolm_middleware.backends.sqlite_state import SQLiteState
from echolm_middleware.core.engine import Engine
from echolm_middleware.doors.langchain_chat import EchoLMChatModel
from tests.unit.conftest import CHEAP, STRONG, FakeClock, WordCounter, WordHashEmbedder, engine_settings
from tests.unit.test_langchain_door import ScriptedTier


@cache
def _engine() -> Engine:
    state = SQLiteState(":memory:")
    return Engine(
        engine_settings(),
        (CHEAP, STRONG),
        embedder=WordHashEmbedder(),
        store=InMemoryExampleStore(),
        tokens=WordCounter(),
        decisions=state,
        stats=state,
        clock=FakeClock(),
    )


class TestEchoLMChatModelUnit(ChatModelUnitTests):
    """Two standard tests skip themselves, for these reasons: `test_init_from_env` (EchoLMChatModel reads no
    environment variable of its own: the tiers' models and `ECHOLM_` settings do) and `test_serdes` (it is
    not serializable: it holds live tier models and an engine, as a wrapper of clients)."""

    @property
    def chat_model_class(self) -> type[EchoLMChatModel]:
        return EchoLMChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        tiers = [ScriptedTier(answer="cheap answer"), ScriptedTier(answer="strong answer")]
        return {"tiers": tiers, "engine": _engine(), "tenant": "standard-tests"}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # `api_key`, `timeout` and `max_retries` are settings of each tier's own model; EchoLMChatModel
        # refuses them rather than drop them (tests/unit/test_langchain_door.py).
        params = dict(super().standard_chat_model_params)
        del params["api_key"], params["timeout"], params["max_retries"]
        return params
