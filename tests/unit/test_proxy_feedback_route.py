"""`POST /echolm/feedback` on a proxy's app: what each kind of answer means, over a recording engine.

The route is mounted on a FastAPI app standing in for LiteLLM's (its `proxy_server` module is not
imported here); LiteLLM's auth is overridden with the key a test names. The real proxy, its auth and the
real engine are driven in tests/integration/test_safe_to_share.py.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import litellm
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from litellm.proxy._types import UserAPIKeyAuth
from litellm.proxy.auth.user_api_key_auth import user_api_key_auth

from echolm_middleware.core.engine import SHARED_TENANT
from echolm_middleware.doors.access import EngineHandle
from echolm_middleware.doors.litellm_proxy import FEEDBACK_PATH, EchoLMProxyHandler, mount_feedback_route
from echolm_middleware.errors import FeedbackAlreadyGiven, StateUnavailable, UnknownRequest


class RecordingEngine:
    """Takes feedback as the engine does for request "known" of team "a": once; anything else is unknown."""

    def __init__(self, *, shared: bool = False) -> None:
        self.settings = SimpleNamespace(tenancy=SimpleNamespace(shared=shared))
        self.scores: list[tuple[str, float, str]] = []

    def feedback(self, request_id: str, score: float, *, tenant: str) -> None:
        if request_id == "state-down":
            raise StateUnavailable("database is locked: /var/lib/echolm/state.db")
        if request_id != "known" or tenant not in ("team:a", SHARED_TENANT):
            raise UnknownRequest(request_id)
        if self.scores:
            raise FeedbackAlreadyGiven(request_id)
        self.scores.append((request_id, score, tenant))


def _client(monkeypatch: pytest.MonkeyPatch, engine: RecordingEngine | None, caller: UserAPIKeyAuth) -> TestClient:
    app = FastAPI()
    monkeypatch.setitem(sys.modules, "litellm.proxy.proxy_server", SimpleNamespace(app=app))
    loaded = threading.Event()  # never set when `engine` is None: the engine is still loading

    def build() -> Any:
        loaded.wait()
        return engine

    handle = EngineHandle(build)
    if engine is not None:
        loaded.set()
        handle.start().result(5)
    handler = EchoLMProxyHandler(handle=handle)  # mounts the routes on `app`, as in a running proxy
    monkeypatch.setattr(litellm, "callbacks", [handler])
    app.dependency_overrides[user_api_key_auth] = lambda: caller
    assert any(getattr(route, "path", None) == FEEDBACK_PATH for route in app.routes)
    assert not mount_feedback_route()  # mounted once, however many handlers a proxy loads
    return TestClient(app)


TEAM_A = UserAPIKeyAuth(api_key="sk-a", team_id="a")
TEAM_B = UserAPIKeyAuth(api_key="sk-b", team_id="b")


@pytest.fixture
def engine() -> Iterator[RecordingEngine]:
    yield RecordingEngine()


def test_a_score_for_the_callers_own_request_is_recorded_once(monkeypatch: pytest.MonkeyPatch, engine: Any) -> None:
    client = _client(monkeypatch, engine, TEAM_A)
    first = client.post(FEEDBACK_PATH, json={"request_id": "known", "score": 0.25})
    second = client.post(FEEDBACK_PATH, json={"request_id": "known", "score": 1})

    assert (first.status_code, first.text) == (200, "recorded\n")
    assert second.status_code == 409
    assert engine.scores == [("known", 0.25, "team:a")]


def test_another_tenants_request_is_as_unknown_as_one_never_issued(
    monkeypatch: pytest.MonkeyPatch, engine: Any
) -> None:
    other_team = _client(monkeypatch, engine, TEAM_B).post(FEEDBACK_PATH, json={"request_id": "known", "score": 0})
    never = _client(monkeypatch, engine, TEAM_A).post(FEEDBACK_PATH, json={"request_id": "never", "score": 0})

    assert other_team.status_code == never.status_code == 404
    assert engine.scores == []


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "known"},
        {"score": 0.5},
        {"request_id": "", "score": 0.5},
        {"request_id": 7, "score": 0.5},
        {"request_id": "known", "score": -0.1},
        {"request_id": "known", "score": 1.01},
        {"request_id": "known", "score": "0.5"},
        {"request_id": "known", "score": True},
        {"request_id": "known", "score": None},
        ["known", 0.5],
    ],
)
def test_a_body_without_an_id_and_a_score_in_0_1_is_refused(
    monkeypatch: pytest.MonkeyPatch, engine: Any, body: Any
) -> None:
    response = _client(monkeypatch, engine, TEAM_A).post(FEEDBACK_PATH, json=body)
    assert response.status_code == 422
    assert engine.scores == []


def test_a_body_that_is_not_json_is_refused(monkeypatch: pytest.MonkeyPatch, engine: Any) -> None:
    response = _client(monkeypatch, engine, TEAM_A).post(FEEDBACK_PATH, content=b"score=1")
    assert response.status_code == 422


def test_feedback_before_the_engine_has_loaded_asks_to_send_it_again(monkeypatch: pytest.MonkeyPatch) -> None:
    response = _client(monkeypatch, None, TEAM_A).post(FEEDBACK_PATH, json={"request_id": "known", "score": 1})
    assert response.status_code == 503 and "again" in response.text


def test_the_admins_feedback_counts_for_the_shared_tenant_only_when_the_cache_is_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = UserAPIKeyAuth(api_key="litellm_proxy_master_key", user_id="default_user_id")
    shared, private = RecordingEngine(shared=True), RecordingEngine(shared=False)

    accepted = _client(monkeypatch, shared, admin).post(FEEDBACK_PATH, json={"request_id": "known", "score": 1})
    refused = _client(monkeypatch, private, admin).post(FEEDBACK_PATH, json={"request_id": "known", "score": 1})

    assert accepted.status_code == 200 and shared.scores == [("known", 1.0, SHARED_TENANT)]
    assert refused.status_code == 404 and private.scores == []


def test_a_state_that_cannot_take_the_score_answers_503_without_its_path(
    monkeypatch: pytest.MonkeyPatch, engine: Any
) -> None:
    response = _client(monkeypatch, engine, TEAM_A).post(FEEDBACK_PATH, json={"request_id": "state-down", "score": 1})
    assert response.status_code == 503
    assert "StateUnavailable" in response.text and "/var/lib" not in response.text
