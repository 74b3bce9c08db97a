"""What a shared cache admits, and who reads it back, through a real LiteLLM proxy with team keys.

The tiers are fake (tests/echo_tier.py): they answer at once with `<tier>: tok0 ... tok19` and keep
every request they were sent, so a test sees exactly which answer reached which prompt. Alice and Bob
are teammates (one tenant); each scenario asks about a topic of its own, so one scenario's examples
never reach another's prompts.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.echo_tier import EchoTier
from tests.integration.conftest import ProxyUnderTest, config_outside_the_checkout, launch_proxy, prices_of

pytestmark = pytest.mark.integration

ALICE, BOB = "sk-alice", "sk-bob"
STRONG_ANSWER = "strong: tok0 tok1 tok2"  # the start of every strong-tier answer


class Stack:
    def __init__(self, proxy: ProxyUnderTest, cheap: EchoTier, strong: EchoTier) -> None:
        self.proxy, self.cheap, self.strong = proxy, cheap, strong

    def ask(self, key: str, messages: list[dict[str, str]], **body: Any) -> tuple[dict[str, Any], Mapping[str, str]]:
        """A non-streamed chat completion: (its JSON body, its response headers)."""
        response = httpx.post(
            f"{self.proxy.url}/v1/chat/completions",
            json={"model": "strong", "messages": messages, **body},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return response.json(), response.headers

    def stream(self, key: str, messages: list[dict[str, str]], *, read_chunks: int | None = None) -> str:
        """A streamed completion, read to its end or hung up on after `read_chunks` chunks; its request id."""
        with (
            httpx.Client(timeout=60) as client,
            client.stream(
                "POST",
                f"{self.proxy.url}/v1/chat/completions",
                json={"model": "strong", "messages": messages, "stream": True},
                headers={"Authorization": f"Bearer {key}"},
            ) as response,
        ):
            assert response.status_code == 200
            request_id = response.headers["x-echolm-request-id"]
            read = 0
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    read += 1
                    if read_chunks is not None and read >= read_chunks:
                        break  # leaving the block closes the connection: the client hung up
        return request_id

    def feedback(self, key: str | None, request_id: str, score: object) -> httpx.Response:
        """POST /echolm/feedback for a past request, with `key` (None: no Authorization header)."""
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        body = {"request_id": request_id, "score": score}
        return httpx.post(f"{self.proxy.url}/echolm/feedback", json=body, headers=headers, timeout=30)

    def posteriors(self) -> dict[tuple[str, str], tuple[float, float]]:
        """What the router has learned, as the proxy keeps it: (tier, bucket|tenant) -> (successes, failures)."""
        with sqlite3.connect(self.proxy.state_dir / "state.db") as db:
            rows = db.execute("SELECT tier, bucket, successes, failures FROM posteriors").fetchall()
        return {(tier, bucket): (successes, failures) for tier, bucket, successes, failures in rows}

    def settled(self, request_id: str, seconds: float) -> str | None:
        """The tier the request was recorded as served by, after waiting `seconds` for any recording."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if recorded := self.proxy.recorded_by(request_id):
                return recorded
            time.sleep(0.2)
        return None


@pytest.fixture(scope="module")
def echo_tiers() -> Iterator[tuple[EchoTier, EchoTier]]:
    with EchoTier("cheap") as cheap, EchoTier("strong") as strong:
        yield cheap, strong


def _config(tiers: tuple[EchoTier, ...], *, team_keys: bool, master_key: bool = True) -> dict[str, Any]:
    config = config_outside_the_checkout()
    config["model_list"] = [
        {"model_name": tier.name, "litellm_params": {"model": f"openai/{tier.name}", "api_base": tier.api_base, "api_key": "x",
                                                     **prices_of(tier.name)}}
        for tier in tiers
    ] + [entry for entry in config["model_list"] if entry["model_name"] == "echolm-cache"]  # reuse's group  # fmt: skip
    general = config.setdefault("general_settings", {})
    if team_keys:
        general["custom_auth"] = "team_keys.user_api_key_auth"
    if not master_key:
        general.pop("master_key", None)
    return config


def _launch(directory: Path, config: dict[str, Any], *, master_key: bool = True, **env: str) -> ProxyUnderTest:
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(Path(__file__).with_name("team_keys.py"), directory / "team_keys.py")
    # The safe default, whatever the lab's proxies share (they serve one user).
    env = {"ECHOLM_TENANCY__SHARED": "false", **env}
    return launch_proxy(directory / "state", directory / "config.yaml", env, master_key=master_key)


@pytest.fixture(scope="module")
def stack(echo_tiers: tuple[EchoTier, EchoTier], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    proxy = _launch(tmp_path_factory.mktemp("safe-to-share"), _config(echo_tiers, team_keys=True))
    try:
        yield Stack(proxy, *echo_tiers)
    finally:
        proxy.stop()


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_stream_the_client_hung_up_on_is_never_cached(stack: Stack) -> None:
    # The control: a stream read to its end is cached, and a teammate's paraphrase is served from it.
    read = stack.stream(ALICE, _user("How tall is the Eiffel Tower in metres? [slow]"))
    assert stack.settled(read, 20) == "strong"
    _, headers = stack.ask(BOB, _user("How tall is the Eiffel Tower in metres?"))
    assert (headers["x-echolm-tier"], headers["x-echolm-examples"]) == ("cheap", "1")

    hung_up = stack.stream(ALICE, _user("How deep is the Mariana Trench in metres? [slow]"), read_chunks=3)
    # The upstream goes on for about 6 s; whatever LiteLLM logs for the cut stream comes by then.
    assert stack.settled(hung_up, 10) is None
    stack.cheap.clear()
    _, headers = stack.ask(BOB, _user("How deep is the Mariana Trench in metres?"))

    assert headers["x-echolm-examples"] == "0" and headers["x-echolm-tier"] == "strong"
    assert stack.cheap.prompts() == []  # no partial answer went anywhere
    assert "x-echolm-best-similarity" not in headers  # off by default: a membership oracle


@pytest.mark.parametrize("streamed", [True, False])
def test_an_answer_the_upstream_never_finished_is_never_cached(stack: Stack, streamed: bool) -> None:
    topic = "the speed of sound in dry air" if streamed else "the freezing point of mercury"
    question = f"What is {topic}? [no-finish]"
    if streamed:
        request_id = stack.stream(ALICE, _user(question))
    else:
        body, headers = stack.ask(ALICE, _user(question))
        request_id = headers["x-echolm-request-id"]
        assert body["choices"][0]["message"]["content"].startswith(STRONG_ANSWER)
    # Recorded (the client read it all), and not admitted: a teammate's paraphrase finds nothing.
    assert stack.settled(request_id, 20) == "strong"
    _, headers = stack.ask(BOB, _user(f"what is {topic}"))

    assert headers["x-echolm-examples"] == "0" and headers["x-echolm-tier"] == "strong"


DOCUMENT = "CONFIDENTIAL. Project Heron: the Lisbon office closes on 30 June; 41 staff move to Porto."


def test_an_answer_about_one_users_document_never_reaches_a_teammate_without_it(stack: Stack) -> None:
    with_document = [{"role": "system", "content": f"Answer from this document.\n\n{DOCUMENT}"}]
    question = "Summarize the document in one line."
    _, headers = stack.ask(ALICE, [*with_document, *_user(question)])
    assert stack.settled(headers["x-echolm-request-id"], 20) == "strong"
    # The control: under the same document, the same words are served from Alice's answer.
    _, same = stack.ask(ALICE, [*with_document, *_user("Summarise the document in a single line.")])
    assert (same["x-echolm-tier"], same["x-echolm-examples"]) == ("cheap", "1")

    stack.cheap.clear()
    stack.strong.clear()
    for messages in (
        _user(question),  # Bob has no document
        [{"role": "system", "content": "Answer from this document.\n\nNothing moves this year."}, *_user(question)],
        [*_user("Here is my memo: the canteen reopens Monday."), {"role": "assistant", "content": "Noted."}, *_user(question)],
    ):  # fmt: skip
        _, headers = stack.ask(BOB, messages)
        assert headers["x-echolm-examples"] == "0" and headers["x-echolm-tier"] == "strong", messages

    seen = "\n".join(stack.cheap.prompts() + stack.strong.prompts())
    assert "Heron" not in seen and STRONG_ANSWER not in seen  # neither the document nor Alice's answer


def test_an_answer_shaped_by_stop_is_routed_but_never_cached(stack: Stack) -> None:
    _, headers = stack.ask(ALICE, _user("Name the largest moon of Saturn."), stop=["tok5"])
    assert stack.settled(headers["x-echolm-request-id"], 20) == "strong"

    _, headers = stack.ask(BOB, _user("name the largest moon of saturn"))

    assert headers["x-echolm-examples"] == "0"


def test_a_seed_passes_the_request_through_untouched(stack: Stack) -> None:
    stack.strong.clear()
    _, headers = stack.ask(ALICE, _user("Pick a colour at random."), seed=7)

    assert headers["x-echolm-action"] == "pass_through"
    assert headers["x-echolm-reason"] == "seed is a promise about the named model"
    assert stack.strong.bodies[-1]["seed"] == 7


def test_requests_with_no_identity_pass_through_untouched_by_default(
    echo_tiers: tuple[EchoTier, EchoTier], tmp_path: Path
) -> None:
    """Any key a proxy without a master key accepts on trust is nobody in particular (the master key
    itself is checked beside the static team keys below)."""
    # LiteLLM 1.108 refuses to start without a master key unless told to (older ones start anyway).
    permit = {"LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    proxy = _launch(tmp_path, _config(echo_tiers, team_keys=False, master_key=False), master_key=False, **permit)
    try:
        stack = Stack(proxy, *echo_tiers)
        _, first = stack.ask("any-key-at-all", _user("What is the tallest mountain in Africa?"))
        assert stack.settled(first["x-echolm-request-id"], 5) is None  # nothing recorded, nothing cached
        _, again = stack.ask("any-key-at-all", _user("what is the tallest mountain in africa"))
        log = proxy.process.log_tail(400)
    finally:
        proxy.stop()

    for headers in (first, again):
        assert headers["x-echolm-action"] == "pass_through"
        assert headers["x-echolm-reason"] == "no tenant identity (tenancy.shared is off)"
    assert "tenancy.shared is off: requests with no team, user or virtual-key identity" in log


def test_shared_mode_is_the_operators_explicit_choice_and_the_proxy_says_so(
    echo_tiers: tuple[EchoTier, EchoTier], tmp_path: Path
) -> None:
    proxy = _launch(tmp_path, _config(echo_tiers, team_keys=False), ECHOLM_TENANCY__SHARED="true")
    try:
        stack = Stack(proxy, *echo_tiers)
        _, first = stack.ask(proxy.process.master_key, _user("What is the longest river in Asia?"))
        assert stack.settled(first["x-echolm-request-id"], 20) == "strong"
        _, again = stack.ask(proxy.process.master_key, _user("what is the longest river in asia"))
        # The admin's feedback counts for the shared tenant its requests were served as.
        feedback = stack.feedback(proxy.process.master_key, first["x-echolm-request-id"], 1.0)
        log = proxy.process.log_tail(400)
    finally:
        proxy.stop()

    assert (again["x-echolm-tier"], again["x-echolm-examples"]) == ("cheap", "1")
    assert feedback.status_code == 200, feedback.text
    assert "tenancy.shared is on" in log


def test_static_team_keys_make_each_team_a_tenant_without_a_key_database(
    echo_tiers: tuple[EchoTier, EchoTier], tmp_path: Path
) -> None:
    config = _config(echo_tiers, team_keys=False)
    config["general_settings"]["custom_auth"] = "echolm_middleware.doors.static_keys.user_api_key_auth"
    proxy = _launch(tmp_path, config, ECHOLM_STATIC_KEYS="sk-acme-1=acme,sk-acme-2=acme,sk-beta-1=beta")
    try:
        stack = Stack(proxy, *echo_tiers)
        _, first = stack.ask("sk-acme-1", _user("Which planet has the most moons?"))
        assert stack.settled(first["x-echolm-request-id"], 20) == "strong"
        _, teammate = stack.ask("sk-acme-2", _user("which planet has the most moons"))
        _, other_team = stack.ask("sk-beta-1", _user("which planet has the most moons"))
        _, admin = stack.ask(proxy.process.master_key, _user("which planet has the most moons"))
        assert stack.settled(admin["x-echolm-request-id"], 5) is None  # nothing recorded for it
        refused = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "strong", "messages": _user("hi")},
            headers={"Authorization": "Bearer sk-not-listed"},
            timeout=30,
        )
        asked = first["x-echolm-request-id"]
        feedback = {key: stack.feedback(key, asked, 1.0) for key in ("sk-not-listed", "sk-beta-1", "sk-acme-2")}
    finally:
        proxy.stop()

    assert (teammate["x-echolm-tier"], teammate["x-echolm-examples"]) == ("cheap", "1")
    assert (other_team["x-echolm-tier"], other_team["x-echolm-examples"]) == ("strong", "0")
    # The master key is the proxy admin, not a tenant: it passes through untouched by default.
    assert admin["x-echolm-action"] == "pass_through"
    assert admin["x-echolm-reason"] == "no tenant identity (tenancy.shared is off)"
    assert refused.status_code in (401, 403)
    # Feedback: refused for a key not listed, unknown to another team, taken from a teammate.
    assert feedback["sk-not-listed"].status_code in (401, 403)
    assert feedback["sk-beta-1"].status_code == 404
    assert feedback["sk-acme-2"].status_code == 200, feedback["sk-acme-2"].text


def test_feedback_through_the_proxy_moves_the_callers_tenant_only_and_counts_once(stack: Stack) -> None:
    _, headers = stack.ask(ALICE, _user("What is the longest bone in the human body?"))
    request_id = headers["x-echolm-request-id"]
    assert stack.settled(request_id, 20) == "strong"
    mine = ("strong", "any|team:team-a")  # the strongest tier has one posterior per tenant
    before = stack.posteriors()

    refused = {
        "another team's key": stack.feedback("sk-carol", request_id, 0.0),
        "no key": stack.feedback(None, request_id, 0.0),
        "a key nobody issued": stack.feedback("sk-mallory", request_id, 0.0),
        "a score above 1": stack.feedback(ALICE, request_id, 1.5),
        "a score that is not a number": stack.feedback(ALICE, request_id, "good"),
        "an id never issued": stack.feedback(ALICE, "req-that-never-was", 0.0),
    }
    assert stack.posteriors() == before, "a refused score moved the router"
    accepted = stack.feedback(BOB, request_id, 0.0)  # Alice's teammate: the same tenant
    again = stack.feedback(ALICE, request_id, 1.0)

    assert refused["another team's key"].status_code == 404  # as unknown as an id never issued
    assert refused["an id never issued"].status_code == 404
    # Refused by LiteLLM's own auth, as its chat route refuses the same keys (this custom_auth raises a bare
    # exception, which LiteLLM answers with a 500; `static_keys` answers 401: the test below).
    for key, case in ((None, "no key"), ("sk-mallory", "a key nobody issued")):
        chat = httpx.post(
            f"{stack.proxy.url}/v1/chat/completions",
            json={"model": "strong", "messages": _user("hi")},
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=30,
        )
        assert refused[case].status_code == chat.status_code >= 400, case
    assert refused["a score above 1"].status_code == 422 and refused["a score that is not a number"].status_code == 422
    assert accepted.status_code == 200, accepted.text
    assert again.status_code == 409  # a response counts once
    successes, failures = before.get(mine, (0.0, 0.0))
    assert stack.posteriors()[mine] == (successes, failures + 1.0)
    assert all(stack.posteriors().get(key) == value for key, value in before.items() if key != mine)


def test_a_key_limited_to_strong_is_never_routed_to_cheap(stack: Stack) -> None:
    _, headers = stack.ask(ALICE, _user("What is the chemical symbol for tungsten?"))
    assert stack.settled(headers["x-echolm-request-id"], 20) == "strong"
    stack.cheap.clear()

    _, dave = stack.ask("sk-dave", _user("what is the chemical symbol for tungsten"))
    _, bob = stack.ask(BOB, _user("what is the chemical symbol for tungsten"))

    assert dave["x-echolm-action"] == "route"
    assert dave["x-echolm-tier"] == "strong" and dave["x-echolm-examples"] == "0"
    # The same team with no limit: served from the team's cached answers (Alice's; Dave's strong answer was
    # cached too), as the cheap tier's example or, where the reuse model trusts the nearest, as it is. The
    # nearest is a near-repeat of Bob's question, so it is shown alone (`retrieval.one_example_similarity`).
    if bob["x-echolm-action"] == "reuse":
        assert bob["x-echolm-tier"] == "echolm-cache" and stack.cheap.bodies == []
    else:
        assert (bob["x-echolm-tier"], bob["x-echolm-examples"]) == ("cheap", "1")
        assert len(stack.cheap.bodies) == 1  # Bob's alone
