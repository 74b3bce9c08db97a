"""Real parts for integration tests: the local llama.cpp tiers from config.yaml and LiteLLM proxies.

The cheap tier's server is moved 10 ports up and a recording forwarder takes its configured port,
so tests see the exact prompt that reached the cheap tier while the real model answers it.

What every test may share is started once per run (session fixtures): the two tiers, the MiniLM
embedder of in-process engines, and one proxy on config.yaml as it is (`repo_proxy`). A test that
needs a config, an environment or a life of its own starts its proxy with `start_proxy_for`, which
stops it when the test ends, so no idle proxy takes CPU from the tests after it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from echolm_lab.local_tiers.assemble import default_model_dir
from echolm_lab.local_tiers.from_config import local_models_in, specs_for_config
from echolm_lab.local_tiers.servers import running_tiers
from echolm_lab.proxy_process import ProxyProcess, start_proxy
from echolm_middleware.backends.minilm import MiniLMEmbedder
from echolm_middleware.config import load_settings, read_config_file
from tests.integration.recording_upstream import RecordingUpstream

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.yaml"
CHEAP, STRONG = "cheap", "strong"


@dataclass
class LocalTiers:
    recorder: RecordingUpstream
    model_list: list[dict[str, Any]]


def alias_of(group: str, raw: Mapping[str, Any]) -> str:
    for entry in raw["model_list"]:
        if entry["model_name"] == group:
            return str(entry["litellm_params"]["model"]).split("/", 1)[-1]
    raise LookupError(group)


@pytest.fixture(scope="session")
def local_tiers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTiers]:
    raw = read_config_file(CONFIG)
    cheap_alias = alias_of(CHEAP, raw)
    cheap_port = dict(local_models_in(raw))[cheap_alias]
    specs = specs_for_config(raw, default_model_dir())
    moved = [replace(s, port=s.port + 10) if s.alias == cheap_alias else s for s in specs]
    with (
        running_tiers(moved, tmp_path_factory.mktemp("tiers")),
        RecordingUpstream(cheap_port, cheap_port + 10) as recorder,
    ):
        yield LocalTiers(recorder=recorder, model_list=raw["model_list"])


def recorded_by(state_db: Path, request_id: str) -> str | None:
    """The tier a request's outcome was recorded as served by, None while unrecorded."""
    with sqlite3.connect(state_db) as db:
        row = db.execute("SELECT recorded_by FROM decisions WHERE request_id = ?", (request_id,)).fetchone()
    return None if row is None else row[0]


def wait_recorded(state_db: Path, request_id: str, timeout: float = 30.0, log: Callable[[], str] = str) -> str:
    """Until the request's outcome is recorded (after the response: LiteLLM logs in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if recorded := recorded_by(state_db, request_id):
            return recorded
        time.sleep(0.2)
    raise AssertionError(f"request {request_id} was not recorded within {timeout}s\n{log()}")


@dataclass
class ProxyUnderTest:
    process: ProxyProcess
    state_dir: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.process.url

    def client(self, api_key: str | None = None) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key or self.process.master_key, max_retries=0, timeout=300)

    def recorded_by(self, request_id: str) -> str | None:
        return recorded_by(self.state_dir / "state.db", request_id)

    def wait_recorded(self, request_id: str, timeout: float = 30.0) -> str:
        return wait_recorded(self.state_dir / "state.db", request_id, timeout)

    def stop(self) -> None:
        self.process.stop()


ProxyFactory = Callable[..., ProxyUnderTest]


def launch_proxy(
    state_dir: Path, config: Path = CONFIG, extra_env: Mapping[str, str] | None = None, *, master_key: bool = True
) -> ProxyUnderTest:
    """A proxy from a config (default: the repo's config.yaml) on the store and state under `state_dir`."""
    env = dict(os.environ)
    env["ECHOLM_STORE__PATH"] = str(state_dir / "chroma")
    env["ECHOLM_STATE__PATH"] = str(state_dir / "state.db")
    env.update(extra_env or {})
    if not master_key:
        env.pop("LITELLM_MASTER_KEY", None)
    process = start_proxy(config, env=env, log_path=state_dir / "proxy.log", master_key=master_key)
    return ProxyUnderTest(process, state_dir, env)


@pytest.fixture
def start_proxy_for(local_tiers: LocalTiers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyFactory]:
    """Start proxies of the test's own (a fresh store unless `state_dir` is given); stopped when it ends."""
    started: list[ProxyUnderTest] = []

    def start(
        config: Path = CONFIG, state_dir: Path | None = None, extra_env: Mapping[str, str] | None = None
    ) -> ProxyUnderTest:
        proxy = launch_proxy(state_dir or tmp_path_factory.mktemp("proxy"), config, extra_env)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def repo_proxy(local_tiers: LocalTiers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyUnderTest]:
    """One proxy on config.yaml as it is, for every test that needs nothing else; its store is shared.

    Its tests ask about topics of their own (cosine similarity under 0.3 between any two of them,
    against `retrieval.threshold` 0.5), so one test's examples never reach another's prompts.
    """
    # It shows the best similarity (off by default), which the routing tests read.
    proxy = launch_proxy(
        tmp_path_factory.mktemp("repo-proxy"), extra_env={"ECHOLM_REQUESTS__BEST_SIMILARITY_HEADER": "true"}
    )
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    """The real MiniLM embedder for in-process engines, loaded once per run (as a proxy worker keeps one)."""
    loaded = MiniLMEmbedder(settings_for_tests().embedder)
    loaded.embed(["warm up"])
    return loaded


def ask(
    proxy: ProxyUnderTest, content: Any, *, model: str = STRONG, api_key: str | None = None, **extra: Any
) -> tuple[Any, Mapping[str, str]]:
    """One chat completion through the proxy with the openai client: (completion, response headers).
    The client is closed after: an open one left to the collector warns of its socket wherever it is freed."""
    with proxy.client(api_key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": content}] if isinstance(content, str) else content,
            max_tokens=extra.pop("max_tokens", 24),
            temperature=0,
            **extra,
        )
        return raw.parse(), raw.headers


def prices_of(group: str) -> dict[str, float]:
    """config.yaml's prices for a tier's deployment (LiteLLM's `input/output_cost_per_token`), for a test's
    own deployment of that tier: the tiers are priced by LiteLLM's deployments, not by the echolm section."""
    (params,) = [e["litellm_params"] for e in read_config_file(CONFIG)["model_list"] if e["model_name"] == group]
    return {key: float(params[key]) for key in ("input_cost_per_token", "output_cost_per_token")}


def settings_for_tests() -> Any:
    return load_settings(CONFIG)[0]


# The door as an installed wheel names it: a config written outside the checkout has no integrations/
# folder beside it, and LiteLLM then imports the name instead of loading a file (get_instance_fn).
WHEEL_CALLBACK = "echolm_middleware.doors.litellm_proxy.proxy_handler"


def config_outside_the_checkout() -> dict[str, Any]:
    """config.yaml as a dict, naming our door as it would from an installed wheel."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    config["litellm_settings"]["callbacks"] = WHEEL_CALLBACK
    return config


def config_with_team_keys(directory: Path) -> Path:
    """config.yaml plus a custom_auth (a file beside it) that maps two keys to two teams."""
    config = config_outside_the_checkout()
    config.setdefault("general_settings", {})["custom_auth"] = "tenant_auth.user_api_key_auth"
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    shutil.copy(Path(__file__).with_name("tenant_auth.py"), directory / "tenant_auth.py")
    return path
