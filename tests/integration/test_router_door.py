"""The LiteLLM Router door on the pinned litellm: a custom routing strategy over the same engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import litellm
import pytest

from echolm_middleware.backends.minilm import MiniLMEmbedder
from echolm_middleware.doors.litellm_router import install_echolm
from echolm_middleware.factory import build_engine
from tests.integration.conftest import CHEAP, STRONG, LocalTiers, settings_for_tests

pytestmark = pytest.mark.integration


def test_this_litellm_is_in_the_range_the_door_supports() -> None:
    # pyproject's range: 1.100 up to the newest release (1.110.x).
    from importlib.metadata import version

    major, minor = (int(part) for part in version("litellm").split(".")[:2])
    assert (1, 100) <= (major, minor) < (1, 111), version("litellm")


def test_router_routes_a_paraphrase_to_the_cheap_tier_with_the_example(
    local_tiers: LocalTiers, embedder: MiniLMEmbedder, tmp_path: Path
) -> None:
    settings = settings_for_tests().stored_under(tmp_path)
    router = litellm.Router(model_list=local_tiers.model_list)
    engine = build_engine(settings, local_tiers.model_list, embedder=embedder)
    door = install_echolm(router, engine)

    async def scenario() -> tuple[object, object]:
        first = await router.acompletion(
            model=STRONG,
            messages=[{"role": "user", "content": "What is the tallest mountain on Earth?"}],
            metadata={"echolm_tenant": "acme"},
        )
        await asyncio.sleep(1.0)  # success callbacks run after the response is returned
        local_tiers.recorder.clear()
        second = await router.acompletion(
            model=STRONG,
            messages=[{"role": "user", "content": "what's the tallest mountain on earth"}],
            metadata={"echolm_tenant": "acme"},
        )
        await asyncio.sleep(1.0)
        return first, second

    try:
        first, second = asyncio.run(scenario())
    finally:
        litellm.callbacks.remove(door.callback)

    answer = first.choices[0].message.content.strip()  # type: ignore[attr-defined]
    assert answer
    (cheap_body,) = local_tiers.recorder.bodies
    assert answer in cheap_body["messages"][-1]["content"]
    assert second.choices[0].message.content.strip()  # type: ignore[attr-defined]
    decisions = [engine.explain(rid) for rid in _request_ids(tmp_path)]
    assert [d.tier for d in decisions] == [STRONG, CHEAP]
    assert len(decisions[1].examples) == 1
    assert door.fail_open_counts == {}


def _request_ids(tmp_path: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(tmp_path / "state.db") as db:
        return [row[0] for row in db.execute("SELECT request_id FROM decisions ORDER BY created_at")]
