"""The proxy door end to end: the repo's config.yaml, real tiers, real MiniLM and Chroma, over HTTP."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.conftest import CHEAP, CONFIG, STRONG, LocalTiers, ProxyFactory, ProxyUnderTest, ask

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(repo_proxy: ProxyUnderTest) -> ProxyUnderTest:
    """The session's proxy on config.yaml as it is (these tests' topics are their own)."""
    return repo_proxy


def _admit(proxy: ProxyUnderTest, question: str) -> str:
    """Ask the strong tier and wait until its answer is recorded as an example; returns the answer."""
    completion, headers = ask(proxy, question)
    assert headers["x-echolm-tier"] == STRONG, headers
    assert proxy.wait_recorded(headers["x-echolm-request-id"]) == STRONG
    answer: str = completion.choices[0].message.content.strip()
    assert answer
    return answer


def test_similar_request_goes_to_cheap_tier_with_the_strong_answer_in_its_prompt(
    proxy: ProxyUnderTest, local_tiers: LocalTiers
) -> None:
    answer = _admit(proxy, "What is the capital city of Australia?")
    local_tiers.recorder.clear()

    completion, headers = ask(proxy, "what's the capital of australia")

    assert headers["x-echolm-tier"] == CHEAP
    assert int(headers["x-echolm-examples"]) == 1
    assert float(headers["x-echolm-best-similarity"]) > 0.8
    assert completion.model_extra["echolm"]["tier"] == CHEAP  # the decision is in the body too
    assert completion.model_extra["echolm"]["request_id"] == headers["x-echolm-request-id"]
    assert completion.choices[0].message.content.strip()
    (cheap_body,) = local_tiers.recorder.bodies
    cheap_prompt = cheap_body["messages"][-1]["content"]
    assert answer in cheap_prompt
    assert "What is the capital city of Australia?" in cheap_prompt
    assert cheap_prompt.rstrip().endswith("what's the capital of australia")


def test_unrelated_request_stays_on_the_strong_tier(proxy: ProxyUnderTest, local_tiers: LocalTiers) -> None:
    local_tiers.recorder.clear()
    _, headers = ask(proxy, "How many legs does a spider have?")
    assert headers["x-echolm-tier"] == STRONG
    assert headers["x-echolm-examples"] == "0"
    assert local_tiers.recorder.bodies == []


def test_a_queue_on_the_strong_tier_shifts_requests_to_the_cheap_tier(start_proxy_for: ProxyFactory) -> None:
    # A proxy of its own with a 1-second latency target, so that a second or so of queue is worth a plain
    # request's quality whatever these CPUs' speed (at 5 s the shift would need a queue this test cannot
    # size without knowing how fast the strong tier answers here).
    proxy = start_proxy_for(extra_env={"ECHOLM_ROUTING__LATENCY_TARGET_S": "1"})
    _, idle = ask(proxy, "Name one primary colour.")
    assert idle["x-echolm-tier"] == STRONG  # without load a request with no example stays on the strong tier

    with ThreadPoolExecutor(max_workers=6) as pool:
        busy = [
            pool.submit(ask, proxy, f"Write ten sentences about the history of the number {n}.", max_tokens=64)
            for n in (11, 23, 37, 41, 53, 67)
        ]
        finished = [future.result() for future in busy]

    # Six at once, none with an example: each waits behind those ahead of it on its tier, at the tier's
    # measured latency. The first go to the strong tier; once the wait there costs more than a request
    # without examples loses on the cheap tier (0.81 s at load_lambda 0.5 per second), the next go cheap.
    tiers = [headers["x-echolm-tier"] for _, headers in finished]
    assert STRONG in tiers and CHEAP in tiers, tiers
    shed = next(headers for _, headers in finished if headers["x-echolm-tier"] == CHEAP)
    assert shed["x-echolm-examples"] == "0"
    explained = subprocess.run(
        [sys.executable, "-m", "echolm_middleware.cli.main", "explain", shed["x-echolm-request-id"],
         "--config", str(CONFIG)],
        capture_output=True, text=True, env=proxy.env, check=True,
    )  # fmt: skip
    assert "strong was charged" in explained.stdout and "s of delay (the wait behind" in explained.stdout
    assert "'strong' -> 'cheap'" in explained.stdout


def test_streamed_request_is_recorded_once_after_it_completes(proxy: ProxyUnderTest, local_tiers: LocalTiers) -> None:
    with proxy.client() as client:  # closed after: an open one warns of its socket wherever it is collected
        raw = client.chat.completions.with_raw_response.create(
            model=STRONG,
            messages=[{"role": "user", "content": "Who painted the Mona Lisa?"}],
            max_tokens=40,
            temperature=0,
            stream=True,
        )
        request_id = raw.headers["x-echolm-request-id"]
        chunks = iter(raw.parse())
        first = next(chunks)
        assert proxy.recorded_by(request_id) is None  # nothing is admitted while the stream is open
        text = "".join((c.choices[0].delta.content or "") for c in [first, *chunks] if c.choices)
        assert text.strip()
        assert proxy.wait_recorded(request_id) == STRONG

        # A streamed paraphrase gets that answer, once, as its only example.
        local_tiers.recorder.clear()
        raw = client.chat.completions.with_raw_response.create(
            model=STRONG,
            messages=[{"role": "user", "content": "who painted the mona lisa"}],
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        streamed = "".join((c.choices[0].delta.content or "") for c in raw.parse() if c.choices)
        assert raw.headers["x-echolm-tier"] == CHEAP
        assert raw.headers["x-echolm-examples"] == "1"
        assert streamed.strip()
        (cheap_body,) = local_tiers.recorder.bodies
        assert cheap_body["stream"] is True
        assert text.strip()[:40] in cheap_body["messages"][-1]["content"]
        assert proxy.wait_recorded(raw.headers["x-echolm-request-id"]) == CHEAP
