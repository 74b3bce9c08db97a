"""The reuse choice through a real LiteLLM proxy: a teammate's repeat is answered from the cache, free.

The tiers are fake (tests/echo_tier.py: real HTTP, every request body kept), so a test sees whether a
model was called at all. The embedder and the store are the real ones (MiniLM, embedded Chroma). Reuse
is configured as an operator would: `echolm.routing.reuse` and a zero-priced `echolm-cache` group.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from echolm_lab.bench.deployments import free_model_group
from echolm_middleware.core.offload_model import FEATURES
from tests.echo_tier import EchoTier
from tests.integration.test_safe_to_share import _config, _launch

pytestmark = pytest.mark.integration

ALICE, BOB, CAROL = "sk-alice", "sk-bob", "sk-carol"  # Alice and Bob: one team; Carol: another
QUESTION = "Which river flows through the city of Vienna?"
CACHE_GROUP = "echolm-cache"
# P(as good) rises with the nearest similarity alone: above 0.5 from cosine 0.87 on.
CLOSE_IS_GOOD = [-20.0, 23.0] + [0.0] * (len(FEATURES) - 2)


@pytest.fixture(scope="module")
def reusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, EchoTier]]:
    with EchoTier("cheap") as cheap, EchoTier("strong") as strong:
        config = _config((cheap, strong), team_keys=True)
        config["model_list"].append(free_model_group(CACHE_GROUP))
        config["echolm"]["routing"] = {
            "reuse": {"enabled": True, "weights": CLOSE_IS_GOOD, "min_probability": 0.5, "model_group": CACHE_GROUP}
        }
        proxy = _launch(Path(tmp_path_factory.mktemp("reuse")), config)
        try:
            yield proxy, strong
        finally:
            proxy.stop()


def _ask(proxy: Any, key: str, text: str, **body: Any) -> httpx.Response:
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "strong", "messages": [{"role": "user", "content": text}], **body},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response


def test_a_teammates_repeat_is_served_from_the_cache_free_and_no_model_is_called(reusing: Any) -> None:
    proxy, strong = reusing
    first = _ask(proxy, ALICE, QUESTION)
    assert first.headers["x-echolm-action"] == "route"
    assert proxy.wait_recorded(first.headers["x-echolm-request-id"]) == "strong"  # admitted as an example
    calls = len(strong.bodies)

    repeat = _ask(proxy, BOB, QUESTION)

    assert repeat.headers["x-echolm-action"] == "reuse"
    assert repeat.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert repeat.json()["choices"][0]["finish_reason"] == "stop"
    assert repeat.json()["model"] == "strong"  # the model the caller named
    assert len(strong.bodies) == calls  # no model was called
    # LiteLLM priced it free, under the group the operator set up for it.
    assert float(repeat.headers["x-litellm-response-cost-original"]) == 0.0
    assert repeat.headers["x-litellm-model-group"] == CACHE_GROUP
    # The group is never called: its address only appears in this header.
    assert repeat.headers["x-litellm-model-api-base"] == free_model_group(CACHE_GROUP)["litellm_params"]["api_base"]
    assert proxy.wait_recorded(repeat.headers["x-echolm-request-id"]) == CACHE_GROUP


def test_a_streamed_repeat_is_served_from_the_cache_too(reusing: Any) -> None:
    proxy, strong = reusing
    calls = len(strong.bodies)
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST",
            f"{proxy.url}/v1/chat/completions",
            json={"model": "strong", "messages": [{"role": "user", "content": QUESTION}], "stream": True},
            headers={"Authorization": f"Bearer {BOB}"},
        ) as response,
    ):
        assert response.headers["x-echolm-action"] == "reuse"
        body = "".join(response.iter_text())
    assert "strong: tok0" in body and "[DONE]" in body
    assert len(strong.bodies) == calls


def test_another_team_and_a_length_limit_the_answer_breaks_are_never_served_from_the_cache(reusing: Any) -> None:
    proxy, _ = reusing
    _ask(proxy, ALICE, QUESTION)  # cached for team-a by the first test, or now

    other_team = _ask(proxy, CAROL, QUESTION)
    too_short = _ask(proxy, BOB, QUESTION, max_tokens=3)

    assert other_team.headers["x-echolm-action"] == "route"
    assert too_short.headers["x-echolm-action"] == "route"
