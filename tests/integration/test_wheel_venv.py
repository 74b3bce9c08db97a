"""The built wheel in a venv of its own: what `pip install "echolm-middleware[litellm,langchain]"` gives a user.

`make test-wheel` builds the wheel from this checkout, makes a fresh venv (torch's CPU build first, as
`make install` does), installs the wheel with the two doors' extras against constraints.txt (not
editable), and runs this file with ECHOLM_WHEEL_VENV naming that venv. Each door runs in the venv's own
interpreter, in a temporary directory: the checkout is on no path there, so a module, a data file or a
dependency the wheel or its extras miss fails here as it would for a user. The tiers are fake (the
proxy's answer at once, tests/echo_tier.py; the LangChain door's are LangChain's generic fake chat model): what
is under test is that the doors and their engine (MiniLM, embedded Chroma, the state database) load and
work from the install, not what a model answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from echolm_lab.proxy_process import free_port
from tests.echo_tier import EchoTier
from tests.integration.conftest import config_outside_the_checkout, prices_of

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.environ.get("ECHOLM_WHEEL_VENV"),
        reason="needs the venv `make test-wheel` builds from the wheel (ECHOLM_WHEEL_VENV names it)",
    ),
]

QUESTION = "What is the capital of Australia?"


@pytest.fixture(scope="module")
def venv() -> Path:
    path = Path(os.environ["ECHOLM_WHEEL_VENV"]).resolve()
    assert (path / "bin" / "python").exists(), f"no venv at {path}"
    return path


def _environment(home: Path) -> dict[str, str]:
    """The user's environment, minus anything that would put the checkout or our venv on the path."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["ECHOLM_STORE__PATH"] = str(home / "chroma")
    env["ECHOLM_STATE__PATH"] = str(home / "state.db")
    return env


def test_the_package_a_venv_imports_is_the_installed_wheel_not_the_checkout(venv: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import echolm_middleware, json; print(json.dumps(echolm_middleware.__file__))"],
        cwd=tmp_path, env=_environment(tmp_path), capture_output=True, text=True, check=True,
    )  # fmt: skip
    location = Path(json.loads(result.stdout))
    assert location.is_relative_to(venv / "lib"), location


@pytest.fixture
def wheel_proxy(venv: Path, tmp_path: Path) -> Iterator[tuple[str, dict[str, str], EchoTier, EchoTier]]:
    """`echolm proxy` from the venv on two fake tiers, in a directory with nothing of the checkout in it."""
    with EchoTier("cheap") as cheap, EchoTier("strong") as strong:
        config = config_outside_the_checkout()
        config["model_list"] = [
            {"model_name": tier.name, "litellm_params": {"model": f"openai/{tier.name}", "api_base": tier.api_base,
                                                         "api_key": "x", **prices_of(tier.name)}}
            for tier in (cheap, strong)
        ] + [entry for entry in config["model_list"] if entry["model_name"] == "echolm-cache"]  # fmt: skip
        for tier in config["echolm"]["tiers"]:
            # The local tiers' GGUF vocabularies need the `local` extra; LiteLLM's counter is the default.
            tier.pop("tokenizer", None)
        config["echolm"]["tenancy"]["shared"] = True  # one user, the master key
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        env = _environment(tmp_path) | {"LITELLM_MASTER_KEY": "sk-wheel-test"}
        port = free_port()
        log = (tmp_path / "proxy.log").open("wb")
        process = subprocess.Popen(
            [str(venv / "bin" / "echolm"), "proxy", "--config", "config.yaml", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                assert process.poll() is None, (tmp_path / "proxy.log").read_text(errors="replace")[-4000:]
                assert time.monotonic() < deadline, "the proxy did not start in 180 s"
                try:
                    with urllib.request.urlopen(f"{url}/health/liveliness", timeout=2):
                        break
                except (urllib.error.URLError, OSError):
                    time.sleep(0.5)
            yield url, {"Authorization": "Bearer sk-wheel-test"}, cheap, strong
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()


def test_the_proxy_door_from_the_wheel_routes_and_finds_its_first_answer_again(
    wheel_proxy: tuple[str, dict[str, str], EchoTier, EchoTier],
) -> None:
    url, headers, cheap, strong = wheel_proxy
    body = {"model": "strong", "messages": [{"role": "user", "content": QUESTION}]}

    first = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    assert first.status_code == 200, first.text
    # No example yet: the tier asked for answers, and the engine (MiniLM, Chroma, state) made the decision.
    assert first.headers["x-echolm-action"] == "route", dict(first.headers)
    assert first.headers["x-echolm-tier"] == "strong"
    assert first.json()["choices"][0]["message"]["content"].startswith("strong: tok0")

    # The first answer is admitted after the response (LiteLLM logs in the background): the same question
    # again finds it, served from the cache or shown as an example to a tier.
    deadline = time.monotonic() + 60
    while True:
        again = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
        assert again.status_code == 200, again.text
        found = again.headers["x-echolm-action"] == "reuse" or int(again.headers["x-echolm-examples"]) >= 1
        if found or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert found, dict(again.headers)
    if again.headers["x-echolm-action"] == "reuse":  # the strong tier's cached answer, as it is
        assert again.json()["choices"][0]["message"]["content"].startswith("strong: tok0")
    else:  # a tier answered with the strong tier's first answer in its prompt
        answering = {"cheap": cheap, "strong": strong}[again.headers["x-echolm-tier"]]
        assert "strong: tok0" in json.dumps(answering.bodies[-1]["messages"])


def test_the_langchain_door_from_the_wheel_answers_and_finds_its_first_answer_again(venv: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json
        from itertools import repeat
        from pathlib import Path
        from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
        from langchain_core.messages import AIMessage
        from echolm_middleware.doors.langchain_chat import EchoLMChatModel, default_settings

        def tier(text):
            # A finish reason, as a real model sends: an answer without one is never cached.
            return GenericFakeChatModel(messages=repeat(AIMessage(text, response_metadata={{"finish_reason": "stop"}})))

        model = EchoLMChatModel(
            tenant="acme",
            tiers=[tier("cheap answer"), tier("Canberra.")],
            tier_names=["cheap", "strong"],
            settings=default_settings(["cheap", "strong"]).stored_under(Path({str(tmp_path)!r})),
        )
        model.wait_until_ready()
        first = model.invoke({QUESTION!r})
        second = model.invoke({QUESTION!r})
        print(json.dumps({{"first": [first.content, first.response_metadata["echolm"]],
                           "second": [second.content, second.response_metadata["echolm"]]}}, default=str))
        """
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script],
        cwd=tmp_path, env=_environment(tmp_path), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    seen: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    (first_text, first), (second_text, second) = seen["first"], seen["second"]
    assert first["action"] == "route" and first["tier"] == "strong" and first_text == "Canberra."
    # The engine embedded, stored and found the first answer: reused as it is, or shown as an example.
    assert second["action"] == "reuse" or second["examples"] >= 1, second
    answers = {"cheap": "cheap answer", "strong": "Canberra."}
    assert second_text == ("Canberra." if second["action"] == "reuse" else answers[second["tier"]])
