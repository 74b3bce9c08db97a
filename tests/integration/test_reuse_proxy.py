"""The reuse choice through a real LiteLLM proxy: a teammate's repeat is answered from the cache, free.

The tiers are fake (tests/echo_tier.py: real HTTP, every request body kept), so a test sees whether a
model was called at all. The embedder and the store are the real ones (MiniLM, embedded Chroma). Reuse
is configured as an operator would: `echolm.routing.reuse` and a zero-priced `echolm-cache` group.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from echolm_lab.bench.deployments import free_model_group
from echolm_middleware.core.offload_model import FEATURES
from tests.echo_tier import EchoTier
from tests.integration.conftest import WHEEL_CALLBACK
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
        # LiteLLM's own logging, as an operator's callback sees it (tests/integration/payload_log.py).
        directory = Path(tmp_path_factory.mktemp("reuse"))
        shutil.copy(Path(__file__).with_name("payload_log.py"), directory / "payload_log.py")
        config["litellm_settings"]["callbacks"] = [WHEEL_CALLBACK, "payload_log.payload_log"]
        proxy = _launch(directory, config, ECHOLM_TEST_PAYLOAD_LOG=str(_payloads(directory / "state")))
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


def _payloads(state_dir: Path) -> Path:
    return state_dir.parent / "payloads.jsonl"


def _logged_decision(proxy: Any, request_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """The decision LiteLLM's StandardLoggingPayload carried for this request, as its callback logged it."""
    deadline = time.monotonic() + timeout_s
    log = _payloads(proxy.state_dir)
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines():
                payload = json.loads(line)
                decision = ((payload.get("metadata") or {}).get("spend_logs_metadata") or {}).get("echolm") or {}
                if decision.get("request_id") == request_id:
                    return dict(decision)
        time.sleep(0.2)
    raise AssertionError(f"no logged payload for {request_id}")


@pytest.mark.parametrize("stream", [False, True])
def test_litellms_own_logging_payload_carries_the_decision(reusing: Any, stream: bool) -> None:
    proxy, _ = reusing
    # Topics of their own: the other run's question must not be near enough to be reused.
    question = "What is the highest mountain of the Alps?" if stream else "Which sea does the Danube flow into?"
    first = _ask(proxy, CAROL, question, stream=stream)
    logged = _logged_decision(proxy, first.headers["x-echolm-request-id"])
    assert logged["requested_model"] == "strong" and logged["tier"] == first.headers["x-echolm-tier"]
    assert logged["action"] == "route" and "tenant" not in logged
    proxy.wait_recorded(first.headers["x-echolm-request-id"])
    repeat = _ask(proxy, CAROL, question, stream=stream)
    assert repeat.headers["x-echolm-action"] == "reuse"
    reused = _logged_decision(proxy, repeat.headers["x-echolm-request-id"])
    assert reused["action"] == "reuse" and reused["requested_model"] == "strong" and reused["tier"] == CACHE_GROUP
