"""SIGKILL the proxy while it records: after a restart the store is whole and only that record is lost.

Recording runs after the response is sent (LiteLLM's success callback), so killing the process the
moment a response arrives lands in or just before the record. Earlier records must all survive, the
embedded Chroma and the SQLite state must open and answer, and nothing may be half there (an id in one
but not the other, or an example that cannot be read back).
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from echolm_middleware.backends.chroma_store import ChromaExampleStore
from echolm_middleware.backends.sqlite_state import SQLiteState
from echolm_middleware.config import StoreSettings
from tests.integration.conftest import STRONG, LocalTiers, ProxyFactory, ask

pytestmark = pytest.mark.integration

# Two kills: each lands at another point of the record (the response's timing varies), and each restart
# opens a store the kill before it may have cut short.
SAFE = ["Who painted the Mona Lisa?", "Who discovered penicillin?"]
KILLED = ["What is the tallest mountain in Africa?", "Which metal is liquid at room temperature?"]


def _strong_decisions(state_db: Path) -> tuple[str, dict[str, str | None]]:
    """The tenant, and each strong-tier query with the tier its record was marked by (None: not marked)."""
    with sqlite3.connect(state_db) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    state = SQLiteState(state_db)
    try:
        decisions = [d for d in state.recent(0.0) if d.action == "route" and d.tier == STRONG]
        (tenant,) = {d.tenant for d in decisions}
        return tenant, {d.query: state.recorded_by(d.request_id) for d in decisions}
    finally:
        state.close()


def test_a_worker_killed_while_recording_loses_that_record_only(
    start_proxy_for: ProxyFactory, local_tiers: LocalTiers, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    for safe, killed in zip(SAFE, KILLED, strict=True):
        proxy = start_proxy_for(state_dir=state_dir)
        completion, headers = ask(proxy, safe, max_tokens=96)
        assert headers["x-echolm-tier"] == STRONG
        assert completion.choices[0].finish_reason == "stop"  # a cut-off answer would not be cached
        proxy.wait_recorded(headers["x-echolm-request-id"])
        _, headers = ask(proxy, killed)
        proxy.process.process.send_signal(signal.SIGKILL)  # the record of `killed` is under way or next
        proxy.process.process.wait(30)

    proxy = start_proxy_for(state_dir=state_dir)  # restarts on the same store and state
    completion, headers = ask(proxy, "How many continents are there?", max_tokens=96)
    assert headers["x-echolm-action"] == "route"
    assert completion.choices[0].finish_reason == "stop"
    proxy.wait_recorded(headers["x-echolm-request-id"])
    proxy.stop()

    tenant, decisions = _strong_decisions(state_dir / "state.db")
    store = ChromaExampleStore(StoreSettings(path=state_dir / "chroma"))
    examples = {example.prompt: example for example in store.examples(tenant)}
    assert store.count(tenant) == len(examples)  # every stored example reads back whole
    assert all(example.answer.strip() for example in examples.values())
    for question in [*SAFE, "How many continents are there?"]:
        assert question in examples, question  # recorded before a kill: never lost
    for question in KILLED:
        # Either recorded and stored, or lost: never stored without its decision's mark.
        if question in examples:
            assert decisions.get(question) == STRONG, question
    assert set(examples) <= set(decisions)
