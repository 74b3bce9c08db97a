"""Bad input through the proxy: a clear error or a clean pass-through, and the store left intact.

It runs on the session's proxy (config.yaml as it is) and reads the store through that proxy's own
`echolm_store_examples` gauge, so the proxy keeps serving the tests after it. That a store reopens
whole after a stop is checked after the fuzzing (test_proxy_fuzz) and after crashes (test_crash_safety).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.integration.conftest import CHEAP, STRONG, LocalTiers, ProxyUnderTest, ask
from tests.integration.workers import metric_total, metrics_text

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


def _post(proxy: ProxyUnderTest, body: dict[str, Any] | bytes) -> httpx.Response:
    headers = {"Authorization": f"Bearer {proxy.process.master_key}", "content-type": "application/json"}
    if not isinstance(body, bytes):
        # ASCII-escaped JSON can carry a lone surrogate ("\\ud800"), as a real client may send it.
        body = json.dumps({"model": STRONG, "max_tokens": 8, **body}, ensure_ascii=True).encode()
    return httpx.post(f"{proxy.url}/v1/chat/completions", content=body, headers=headers, timeout=300)


def _stored(proxy: ProxyUnderTest) -> float:
    """How many examples the proxy's store holds, all tenants, as its own metrics read it at scrape time."""
    return metric_total(metrics_text(proxy.process, proxy.process.master_key), "echolm_store_examples")


def test_bad_inputs_get_a_clear_answer_and_leave_the_store_intact(
    repo_proxy: ProxyUnderTest, local_tiers: LocalTiers
) -> None:
    proxy = repo_proxy
    before = _stored(proxy)
    _, headers = ask(proxy, QUESTION)
    assert proxy.wait_recorded(headers["x-echolm-request-id"]) == STRONG
    deadline = time.monotonic() + 30
    while _stored(proxy) < before + 1:  # admitted just after the record is marked
        assert time.monotonic() < deadline, proxy.process.log_tail(40)
        time.sleep(0.2)

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

    # The proxy still serves, the good example still reaches the cheap tier, and the store holds it alone.
    local_tiers.recorder.clear()
    _, headers = ask(proxy, PARAPHRASE)
    assert headers["x-echolm-tier"] == CHEAP and headers["x-echolm-examples"] == "1"
    (cheap_body,) = local_tiers.recorder.bodies
    assert QUESTION in cheap_body["messages"][-1]["content"]
    proxy.wait_recorded(headers["x-echolm-request-id"])
    assert _stored(proxy) == before + 1
