"""Bad input through the proxy: a clear error or a clean pass-through, and the store left intact."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from echolm_middleware.backends.chroma_store import ChromaExampleStore
from echolm_middleware.config import StoreSettings
from tests.integration.conftest import CHEAP, STRONG, LocalTiers, ProxyFactory, ProxyUnderTest, ask

pytestmark = pytest.mark.integration

QUESTION = "In which country is the city of Kyoto?"
PARAPHRASE = "in which country is kyoto"
TINY_PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

# (name, request body fields, the pass-through reason our hook must give, or None when LiteLLM rejects first)
BAD_REQUESTS: list[tuple[str, dict[str, Any], str | None]] = [
    ("empty messages", {"messages": []}, "empty messages"),
    (
        "image part",
        {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": TINY_PNG}},
        ]}]},
        "non-text content",
    ),
    (
        "tools offered",
        {"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
         "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]},
        "request offers tools",
    ),
    (
        "tool calls in history",
        {"messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]},
        "tool calls",
    ),
    ("prompt far over the context window", {"messages": [{"role": "user", "content": "word " * 20000}]}, "context"),
    ("lone surrogate", {"messages": [{"role": "user", "content": "bad \ud800 text"}]}, "UTF-8"),
    ("huge number of messages", {"messages": [{"role": "user", "content": "hi"}] * 5000}, "too many messages"),
    ("unknown tier name", {"model": "no-such-tier", "messages": [{"role": "user", "content": QUESTION}]}, "not an EchoLM tier"),
]  # fmt: skip


@pytest.fixture(scope="module")
def proxy(start_proxy_for: ProxyFactory) -> ProxyUnderTest:
    return start_proxy_for()


def _post(proxy: ProxyUnderTest, body: dict[str, Any] | bytes) -> httpx.Response:
    headers = {"Authorization": f"Bearer {proxy.process.master_key}", "content-type": "application/json"}
    if not isinstance(body, bytes):
        # ASCII-escaped JSON can carry a lone surrogate ("\\ud800"), as a real client may send it.
        body = json.dumps({"model": STRONG, "max_tokens": 8, **body}, ensure_ascii=True).encode()
    return httpx.post(f"{proxy.url}/v1/chat/completions", content=body, headers=headers, timeout=300)


def test_bad_inputs_get_a_clear_answer_and_leave_the_store_intact(
    proxy: ProxyUnderTest, local_tiers: LocalTiers
) -> None:
    _, headers = ask(proxy, QUESTION)
    proxy.wait_recorded(headers["x-echolm-request-id"])

    outcomes = {}
    for name, body, reason in BAD_REQUESTS:
        response = _post(proxy, body)
        outcomes[name] = (response.status_code, response.headers.get("x-echolm-reason", ""), response.text[:200])
        # Either a clean pass-through or a clear client error; never a crash of the proxy.
        assert response.status_code < 500 or response.headers.get("x-echolm-action") == "pass_through", (
            name,
            outcomes[name],
        )
        if response.status_code >= 400:
            assert response.json().get("error", {}).get("message"), (name, outcomes[name])
        if reason is not None and "x-echolm-action" in response.headers:
            assert response.headers["x-echolm-action"] == "pass_through", (name, outcomes[name])
            assert reason in response.headers["x-echolm-reason"], (name, outcomes[name])

    invalid_utf8 = _post(proxy, b'{"model": "strong", "messages": [{"role": "user", "content": "\xff\xfe bad"}]}')
    assert 400 <= invalid_utf8.status_code < 500, invalid_utf8.text[:200]

    # The proxy still serves, and the store still holds exactly the one good example.
    local_tiers.recorder.clear()
    _, headers = ask(proxy, PARAPHRASE)
    assert headers["x-echolm-tier"] == CHEAP and headers["x-echolm-examples"] == "1"
    proxy.stop()
    store = ChromaExampleStore(StoreSettings(path=proxy.state_dir / "chroma"))
    tenant = _tenant_of_decisions(proxy)
    assert store.count(tenant) == 1


def _tenant_of_decisions(proxy: ProxyUnderTest) -> str:
    import sqlite3

    with sqlite3.connect(proxy.state_dir / "state.db") as db:
        tenants = {row[0] for row in db.execute("SELECT tenant FROM decisions")}
    assert len(tenants) == 1, tenants
    return tenants.pop()
