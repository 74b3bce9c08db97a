"""Property-based fuzzing through the real proxy: no 5xx that LiteLLM alone would not also give.

Hypothesis writes request bodies of every shape (roles, content parts, sizes, encodings, escapes); each
goes to the proxy with EchoLM. A 5xx is ours unless LiteLLM without our callback answers the same body
with a 5xx too. Afterwards the store reads back whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echolm_middleware.backends.chroma_store import ChromaExampleStore
from echolm_middleware.config import StoreSettings
from tests.integration.conftest import STRONG, LocalTiers, ProxyUnderTest, config_outside_the_checkout, launch_proxy

pytestmark = pytest.mark.integration

TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()), max_size=80)
PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio", "file", "weird"]), "x": TEXT}),
    st.dictionaries(TEXT, TEXT, max_size=2),
)
CONTENT = st.one_of(TEXT, st.none(), st.integers(), st.lists(PART, max_size=3), st.just("x" * 20_000))
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(["user", "assistant", "system", "developer", "tool"]), TEXT),
         "content": CONTENT},
        optional={"name": TEXT, "tool_call_id": TEXT},
    ),
    TEXT,
    st.integers(),
)  # fmt: skip
BODY = st.fixed_dictionaries(
    {"messages": st.one_of(st.lists(MESSAGE, max_size=4), TEXT, st.none())},
    optional={"metadata": st.dictionaries(TEXT, TEXT, max_size=2), "user": TEXT, "stream": st.booleans()},
)


@pytest.fixture(scope="module")
def proxies(local_tiers: LocalTiers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """config.yaml with and without our callback, both without LiteLLM's retries.

    LiteLLM 1.108 retries a failed upstream call twice with backoff (about 4.5 s a body), the same with
    or without our callback; a 5xx is compared on the final status, which the retries do not change.
    """
    folder = tmp_path_factory.mktemp("fuzz")
    configs = []
    for name, callbacks in (("ours", True), ("plain", False)):
        config = config_outside_the_checkout()
        if not callbacks:
            config["litellm_settings"].pop("callbacks", None)
        config.setdefault("router_settings", {})["num_retries"] = 0
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        configs.append(path)
    # Started side by side: each spends about 10 s importing LiteLLM. Whichever started is stopped at the end.
    with ThreadPoolExecutor(2) as pool:
        starting = [
            pool.submit(launch_proxy, folder / name, path)
            for name, path in zip(("ours", "plain"), configs, strict=True)
        ]
    try:
        ours, alone = (future.result() for future in starting)
        yield ours, alone
    finally:
        for future in starting:
            if future.exception() is None:
                future.result().stop()


def _post(proxy: ProxyUnderTest, body: dict[str, Any]) -> int:
    payload = json.dumps({"model": STRONG, "max_tokens": 1, "temperature": 0, **body})  # lone surrogates escaped
    try:
        response = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            content=payload.encode(),
            headers={"Authorization": f"Bearer {proxy.process.master_key}", "Content-Type": "application/json"},
            timeout=120,
        )
    except httpx.TransportError:
        return 599  # the server dropped the connection: as bad as a 5xx
    return response.status_code


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY)
def test_no_request_shape_gets_a_5xx_from_us(proxies: tuple[Any, Any], local_tiers: LocalTiers, body: Any) -> None:
    ours, alone = proxies
    status = _post(ours, body)
    if status >= 500:
        assert _post(alone, body) >= 500, f"5xx with EchoLM only: {json.dumps(body)[:500]}"


def test_after_the_fuzzing_the_store_reads_back_whole(proxies: tuple[Any, Any]) -> None:
    ours, _ = proxies
    ours.stop()
    store = ChromaExampleStore(StoreSettings(path=Path(ours.state_dir) / "chroma"))
    for tenant in store.tenants():
        examples = store.examples(tenant)
        assert store.count(tenant) == len(examples)
        assert all(example.prompt.strip() and example.answer.strip() for example in examples)
