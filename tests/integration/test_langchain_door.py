"""The LangChain door on the real parts: local llama.cpp tiers via ChatOpenAI, MiniLM, embedded Chroma.

The cheap tier sits behind the recording forwarder (see conftest), so a test sees the exact prompt
that reached it while the real model answers.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from echolm_middleware.backends.minilm import MiniLMEmbedder
from echolm_middleware.config import Settings
from echolm_middleware.doors.langchain_chat import EchoLMChatModel
from echolm_middleware.factory import build_engine
from tests.integration.conftest import CHEAP, ROOT, STRONG, LocalTiers, settings_for_tests

pytestmark = pytest.mark.integration

QUESTION = "What is the tallest mountain on Earth?"
PARAPHRASE = "what's the tallest mountain on earth"


def _settings(tmp_path: Path) -> Settings:
    settings: Settings = settings_for_tests().stored_under(tmp_path)
    return settings


def _chat_model(local_tiers: LocalTiers, group: str, max_tokens: int = 32) -> ChatOpenAI:
    """The tier's deployment from config.yaml, as LangChain's OpenAI-compatible chat model."""
    (params,) = [e["litellm_params"] for e in local_tiers.model_list if e["model_name"] == group]
    return ChatOpenAI(
        base_url=params["api_base"],
        model=params["model"].split("/", 1)[-1],
        api_key="local",  # type: ignore[arg-type]
        temperature=0,
        # ChatOpenAI sends `max_tokens` as `max_completion_tokens`, which llama.cpp's server ignores.
        extra_body={"max_tokens": max_tokens},
        max_retries=0,
        timeout=300,
    )


@pytest.fixture
def model(local_tiers: LocalTiers, embedder: MiniLMEmbedder, tmp_path: Path) -> Iterator[EchoLMChatModel]:
    """The door over an engine of the test's own (store and state under tmp_path) on the session's MiniLM.

    The door's own lazy build from settings runs in the batch, unreachable-store and README tests.
    """
    engine = build_engine(_settings(tmp_path), embedder=embedder)
    engine.warm_up()
    wrapper = EchoLMChatModel(
        tenant="default", tiers=[_chat_model(local_tiers, CHEAP), _chat_model(local_tiers, STRONG)], engine=engine
    )
    wrapper.wait_until_ready()
    local_tiers.recorder.clear()
    yield wrapper


def _echolm(message: BaseMessage) -> dict[str, Any]:
    return dict(message.response_metadata["echolm"])


def _recorded(tmp_path: Path) -> dict[str, str | None]:
    with sqlite3.connect(tmp_path / "state.db") as db:
        return dict(db.execute("SELECT request_id, recorded_by FROM decisions").fetchall())


def _cheap_prompts(local_tiers: LocalTiers) -> list[str]:
    return [str(body["messages"][-1]["content"]) for body in local_tiers.recorder.bodies]


def test_a_chain_run_twice_on_paraphrases_answers_the_second_on_the_cheap_tier(
    model: EchoLMChatModel, local_tiers: LocalTiers, tmp_path: Path
) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Answer in one short sentence."), ("user", "{question}")])
    chain = prompt | model

    first = chain.invoke({"question": QUESTION})
    second = chain.invoke({"question": PARAPHRASE})

    assert _echolm(first)["tier"] == STRONG and str(first.content).strip()
    meta = _echolm(second)
    assert meta["tier"] == CHEAP and meta["examples"] == 1
    assert meta["best_similarity"] is None  # not shown unless requests.best_similarity_header
    (cheap_prompt,) = _cheap_prompts(local_tiers)
    assert str(first.content).strip() in cheap_prompt  # the first answer reached the cheap tier as an example
    assert _recorded(tmp_path) == {_echolm(first)["request_id"]: STRONG, meta["request_id"]: CHEAP}
    assert model.fail_open_counts == {}


def test_streaming_yields_several_chunks_and_records_once(model: EchoLMChatModel, tmp_path: Path) -> None:
    chunks = list(model.stream("Name three primary colours."))

    texts = [str(c.content) for c in chunks if c.content]
    assert len(texts) >= 3
    request_id = _echolm(chunks[0])["request_id"]
    assert _recorded(tmp_path) == {request_id: STRONG}
    stored = model.wait_until_ready().store.count("default")
    assert stored == 1


def test_async_batch_of_twenty_loses_and_duplicates_nothing(local_tiers: LocalTiers, tmp_path: Path) -> None:
    # Short answers keep twenty real generations quick; every one of them must be recorded once.
    model = EchoLMChatModel(
        tenant="default",
        tiers=[_chat_model(local_tiers, CHEAP, 8), _chat_model(local_tiers, STRONG, 8)],
        settings=_settings(tmp_path),
    )
    model.wait_until_ready()
    countries = ["France", "Japan", "Brazil", "Kenya", "Canada", "Egypt", "India", "Peru", "Norway", "Chile"]
    questions = [f"What is the capital of {c}?" for c in countries] + [
        f"What language is spoken in {c}?" for c in countries
    ]

    results = asyncio.run(model.abatch(questions, config={"max_concurrency": 4}))

    ids = [_echolm(r)["request_id"] for r in results]
    assert len(set(ids)) == 20 and all(str(r.content).strip() for r in results)
    recorded = _recorded(tmp_path)
    assert set(recorded) == set(ids)
    assert {i: recorded[i] for i in ids} == {i: _echolm(r)["tier"] for i, r in zip(ids, results, strict=True)}
    # Strong answers that ran to their end were admitted, each once (ids are per prompt).
    engine = model.wait_until_ready()
    assert engine.store.count("default") <= sum(1 for r in results if _echolm(r)["tier"] == STRONG)
    assert model.fail_open_counts == {}


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The city name")


def test_a_tool_binding_chain_still_returns_tool_calls(model: EchoLMChatModel) -> None:
    result = model.bind_tools([GetWeather], tool_choice="GetWeather").invoke("What's the weather in Paris right now?")

    assert isinstance(result, AIMessage)
    assert result.tool_calls and result.tool_calls[0]["name"] == "GetWeather"
    assert "paris" in str(result.tool_calls[0]["args"].get("city", "")).lower()
    assert _echolm(result)["action"] == "pass_through" and _echolm(result)["tier"] == STRONG


def test_with_structured_output_returns_the_schema(model: EchoLMChatModel) -> None:
    parsed = model.with_structured_output(GetWeather).invoke("Weather in Tokyo, please.")

    assert isinstance(parsed, GetWeather) and "tokyo" in parsed.city.lower()


class BrokenEmbedder:
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise RuntimeError("embedder exploded")


def test_a_failing_embedder_fails_open_to_the_strong_tier(local_tiers: LocalTiers, tmp_path: Path) -> None:
    engine = build_engine(_settings(tmp_path), embedder=BrokenEmbedder())
    model = EchoLMChatModel(
        tenant="default", tiers=[_chat_model(local_tiers, CHEAP), _chat_model(local_tiers, STRONG)], engine=engine
    )

    result = model.invoke(QUESTION)

    assert str(result.content).strip()
    assert _echolm(result)["action"] == "fail_open" and _echolm(result)["tier"] == STRONG
    assert model.fail_open_counts == {"RuntimeError": 1}
    assert local_tiers.recorder.bodies == []  # nothing went to the cheap tier


def test_an_unreachable_store_fails_open(local_tiers: LocalTiers, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings = settings.model_copy(
        update={"store": settings.store.model_copy(update={"server_url": "http://127.0.0.1:9"})}
    )
    model = EchoLMChatModel(
        tenant="default",
        tiers=[_chat_model(local_tiers, CHEAP), _chat_model(local_tiers, STRONG)],
        settings=settings,
        startup_wait_s=10,
    )

    result = model.invoke(QUESTION)

    assert str(result.content).strip() and _echolm(result)["action"] == "fail_open"
    assert any(reason.startswith("engine not ready") for reason in model.fail_open_counts)


def test_a_tenant_never_sees_another_tenants_examples(
    model: EchoLMChatModel, local_tiers: LocalTiers, tmp_path: Path
) -> None:
    acme = {"metadata": {"echolm_tenant": "acme"}}
    globex = {"metadata": {"echolm_tenant": "globex"}}
    short = ("system", "Answer in one short sentence.")  # a whole answer, not one cut at max_tokens
    first = model.invoke([short, ("user", QUESTION)], config=acme)
    answer = str(first.content).strip()

    other = model.invoke([short, ("user", PARAPHRASE)], config=globex)
    same = model.invoke([short, ("user", PARAPHRASE)], config=acme)

    assert first.response_metadata["finish_reason"] == "stop"
    assert _echolm(other)["examples"] == 0 and _echolm(other)["best_similarity"] is None
    assert _echolm(same)["examples"] == 1
    # Examples only ever go to the cheap tier: exactly one prompt there held acme's answer, acme's own.
    assert sum(answer in p for p in _cheap_prompts(local_tiers)) == 1


def _readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## LangChain", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's LangChain section has no python snippet"
    return match.group(1)


def test_the_readme_snippet_runs(local_tiers: LocalTiers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the snippet keeps its store under ./.echolm
    namespace: dict[str, Any] = {}
    exec(compile(_readme_snippet(), "README.md", "exec"), namespace)

    first, second = namespace["first"], namespace["second"]
    assert first.response_metadata["echolm"]["tier"] == "strong"
    assert second.response_metadata["echolm"]["tier"] == "cheap"
    assert second.response_metadata["echolm"]["examples"] == 1
    assert (tmp_path / ".echolm" / "chroma").is_dir()
