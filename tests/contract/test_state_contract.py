"""The state backend's contract: DecisionLog, DecisionHistory, RouterStatsStore and UpkeepJournal
(Leases: test_coordination_contract.py).

Tests that take `state: State` hold for any backend the factory's STATES may name; SQLiteState runs them
on a file and in memory (`state` fixture), and another backend (Redis, Postgres) joins by becoming a
param of that fixture. Tests that open `SQLiteState` themselves are about SQLite files.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from echolm_middleware.backends.sqlite_state import SQLiteState
from echolm_middleware.core.ports import DecisionHistory, UpkeepJournal
from echolm_middleware.core.types import Decision, ExampleTrace, TierScore
from echolm_middleware.errors import StateUnavailable
from echolm_middleware.factory import State


def _decision(request_id: str = "r1", **overrides: object) -> Decision:
    values: dict[str, object] = {
        "request_id": request_id,
        "tenant": "team-ä",
        "created_at": 1_700_000_000.25,
        "requested_model": "strong",
        "action": "route",
        "reason": "routed",
        "tier": "cheap",
        "query": "What is the capital of France? 🇫🇷",
        "bucket": "high",
        "augmentation": "inline",
        "examples": [
            ExampleTrace(
                id="e1",
                prompt="Capital of France?",
                similarity=0.93,
                utility=0.88,
                features={"similarity": 0.93, "quality": 0.8, "age": -0.01},
                tokens=12,
            )
        ],
        "candidates_considered": 4,
        "scores": [
            TierScore("cheap", 0.88, 8.8, 1.2, 0.05, 0.0, 2.0, 0.005, 0.0, 0.875),
            TierScore("strong", 0.8, 8.0, 2.0, 1.0, 3.0, 1.0, 0.1, 0.48, 0.22),
        ],
        "best_similarity": 0.93,
        "example_tokens": 12,
        "overhead_ms": 3.5,
    }
    values.update(overrides)
    return Decision(**values)  # type: ignore[arg-type]


def test_a_decision_with_examples_and_scores_round_trips(state: State) -> None:
    decision = _decision()

    state.put(decision)

    assert state.get("r1") == decision
    assert state.get("unknown") is None


def test_putting_a_decision_again_replaces_it(state: State) -> None:
    state.put(_decision(reason="first"))
    state.put(_decision(reason="second"))

    kept = state.get("r1")
    assert kept is not None and kept.reason == "second"


def test_a_decision_without_optional_parts_round_trips(state: State) -> None:
    decision = Decision("r2", "t", 0.0, "gpt-4o", "pass_through", "request offers tools", "gpt-4o")

    state.put(decision)

    assert state.get("r2") == decision


def test_mark_recorded_is_true_once_then_false(state: State) -> None:
    state.put(_decision())

    assert state.recorded_by("r1") is None
    assert state.mark_recorded("r1", "strong") is True
    assert state.mark_recorded("r1", "cheap") is False
    assert state.recorded_by("r1") == "strong"
    assert state.mark_recorded("never-put", "strong") is False


def test_mark_feedback_is_true_once_then_false(state: State) -> None:
    state.put(_decision())

    assert state.mark_feedback("r1", 0.5) is True
    assert state.mark_feedback("r1", 1.0) is False
    assert state.mark_feedback("never-put", 1.0) is False


def test_a_database_from_before_feedback_was_kept_gains_the_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE decisions (request_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, "
            "created_at REAL NOT NULL, body TEXT NOT NULL, recorded_by TEXT)"
        )
    db.close()
    state = SQLiteState(path)
    try:
        state.put(_decision())
        assert state.mark_feedback("r1", 0.5) is True
        assert state.get("r1") == _decision()
    finally:
        state.close()


def test_mark_recorded_is_true_for_exactly_one_of_many_threads(state: State) -> None:
    state.put(_decision())
    results: list[bool] = []

    def record() -> None:
        results.append(state.mark_recorded("r1", threading.current_thread().name))

    threads = [threading.Thread(target=record) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False] * 7 + [True]


def test_posteriors_start_empty_and_accumulate_per_tier_and_bucket(state: State) -> None:
    assert state.load_posteriors() == {}

    state.add_to_posterior("cheap", "high", 1.0, 0.0)
    state.add_to_posterior("cheap", "high", 0.25, 0.75)
    state.add_to_posterior("cheap", "mid", 0.0, 1.0)
    state.add_to_posterior("strong", "any", 0.5, 0.5)

    assert state.load_posteriors() == {
        ("cheap", "high"): pytest.approx((1.25, 0.75)),
        ("cheap", "mid"): (0.0, 1.0),
        ("strong", "any"): (0.5, 0.5),
    }


def test_weights_start_absent_and_round_trip(state: State) -> None:
    assert state.load_weights() is None
    weights = {"bias": -10.25, "similarity": 11.5, "quality": 1.0, "source": 0.5, "offload": 1.0, "age": 0.3}

    state.save_weights(weights)
    state.save_weights({**weights, "bias": -9.75})

    assert state.load_weights() == {**weights, "bias": -9.75}


def test_everything_survives_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.db"
    first = SQLiteState(path)
    first.put(_decision())
    first.mark_recorded("r1", "strong")
    first.add_to_posterior("cheap", "high", 0.75, 0.25)
    first.save_weights({"bias": -10.0})
    first.close()

    reopened = SQLiteState(path)
    try:
        assert reopened.get("r1") == _decision()
        assert reopened.recorded_by("r1") == "strong"
        assert reopened.mark_recorded("r1", "cheap") is False
        assert reopened.load_posteriors() == {("cheap", "high"): (0.75, 0.25)}
        assert reopened.load_weights() == {"bias": -10.0}
    finally:
        reopened.close()


def test_two_handles_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    proxy, explainer = SQLiteState(path), SQLiteState(path)
    try:
        proxy.put(_decision())
        proxy.add_to_posterior("cheap", "high", 1.0, 0.0)
        assert explainer.get("r1") == _decision()
        assert explainer.mark_recorded("r1", "strong") is True
        assert proxy.mark_recorded("r1", "strong") is False
        explainer.add_to_posterior("cheap", "high", 1.0, 0.0)
        assert proxy.load_posteriors() == {("cheap", "high"): (2.0, 0.0)}
    finally:
        proxy.close()
        explainer.close()


def test_in_memory_states_are_separate() -> None:
    one, two = SQLiteState(":memory:"), SQLiteState(":memory:")
    try:
        one.put(_decision())
        assert two.get("r1") is None
    finally:
        one.close()
        two.close()


def test_a_path_that_cannot_hold_a_database_is_state_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StateUnavailable, match="cannot open state database"):
        SQLiteState(tmp_path)  # a directory


def test_a_closed_state_raises_state_unavailable(tmp_path: Path) -> None:
    closed = SQLiteState(tmp_path / "state.db")
    closed.close()

    with pytest.raises(StateUnavailable):
        closed.get("r1")
    with pytest.raises(StateUnavailable):
        closed.put(_decision())


def test_decisions_past_their_retention_are_deleted_on_a_timer_with_no_writes_at_all(tmp_path: Path) -> None:
    now = [1_000_000.0]
    writer = SQLiteState(tmp_path / "state.db")
    writer.put(Decision("old", "t", now[0] - 3_000, "strong", "route", "routed", "strong"))
    writer.put(Decision("new", "t", now[0] - 10, "strong", "route", "routed", "strong"))
    writer.close()

    state = SQLiteState(tmp_path / "state.db", retention_s=3_600.0, prune_every_s=0.05, clock=lambda: now[0])
    try:
        assert state.get("old") is not None and state.get("new") is not None  # within the retention at open
        now[0] += 1_000  # "old" is now 4,000 s old; nothing is written from here on
        deadline = time.monotonic() + 5
        while state.get("old") is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state.get("old") is None
        assert state.get("new") is not None
    finally:
        state.close()


def test_decisions_that_expired_while_no_process_ran_are_deleted_at_open(tmp_path: Path) -> None:
    writer = SQLiteState(tmp_path / "state.db")
    writer.put(Decision("old", "t", time.time() - 8 * 86_400, "strong", "route", "routed", "strong"))
    writer.close()

    state = SQLiteState(tmp_path / "state.db", retention_s=7 * 86_400)
    try:
        assert state.get("old") is None
    finally:
        state.close()


# ---- DecisionHistory: what coverage reads its misses from ----------------------------------------


def test_recent_decisions_are_those_made_since_a_time_oldest_first(state: State) -> None:
    history: DecisionHistory = state
    for request_id, created_at in [("r3", 30.0), ("r1", 10.0), ("r2", 20.0)]:
        state.put(_decision(request_id, created_at=created_at))

    assert [d.request_id for d in history.recent(0.0)] == ["r1", "r2", "r3"]
    assert history.recent(20.0) == [_decision("r2", created_at=20.0), _decision("r3", created_at=30.0)]
    assert history.recent(30.5) == []


def test_the_history_tells_which_tier_was_recorded(state: State) -> None:
    history: DecisionHistory = state
    state.put(_decision())

    assert history.recorded_by("r1") is None
    state.mark_recorded("r1", "strong")
    assert history.recorded_by("r1") == "strong"
    assert history.recorded_by("never-put") is None


# ---- UpkeepJournal: a killed pass is finished by the next -----------------------------------------

STEPS = ['{"kind": "replay", "prompt": "Capital of France? 🇫🇷"}', '{"kind": "replay"}', '{"kind": "coverage"}']


def test_an_empty_journal_has_no_unfinished_pass(state: State) -> None:
    journal: UpkeepJournal = state
    assert journal.unfinished_pass() is None

    journal.begin_pass("run-0", [])  # a pass that planned nothing

    assert journal.unfinished_pass() is None


def test_a_begun_pass_is_unfinished_with_its_steps_in_order(state: State) -> None:
    journal: UpkeepJournal = state

    journal.begin_pass("run-1", STEPS)

    assert journal.unfinished_pass() == ("run-1", list(enumerate(STEPS)))


def test_finished_steps_leave_the_pass_and_its_last_step_closes_it(state: State) -> None:
    journal: UpkeepJournal = state
    journal.begin_pass("run-1", STEPS)

    journal.finish_step("run-1", 1)
    assert journal.unfinished_pass() == ("run-1", [(0, STEPS[0]), (2, STEPS[2])])
    journal.finish_step("run-1", 0)
    journal.finish_step("run-1", 0)  # a resumed pass may mark a step again
    journal.finish_step("run-1", 7)  # no such step: nothing happens
    assert journal.unfinished_pass() == ("run-1", [(2, STEPS[2])])
    journal.finish_step("run-1", 2)
    assert journal.unfinished_pass() is None

    journal.begin_pass("run-2", STEPS[:1])
    assert journal.unfinished_pass() == ("run-2", [(0, STEPS[0])])


def test_a_pass_killed_in_one_process_is_found_by_the_next_on_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    killed = SQLiteState(path)
    killed.begin_pass("run-1", STEPS)
    killed.finish_step("run-1", 0)  # then the process dies, without closing anything

    later = SQLiteState(path)
    try:
        assert later.unfinished_pass() == ("run-1", [(1, STEPS[1]), (2, STEPS[2])])
    finally:
        later.close()
        killed.close()


def test_a_write_blocked_by_another_process_fails_within_the_busy_timeout(tmp_path: Path) -> None:
    """A request's decision is written in its time budget: a database another process holds makes the
    write fail (and the request fail open) after `state.busy_timeout_s`, not after sqlite's usual wait."""
    import sqlite3
    import time

    state = SQLiteState(tmp_path / "state.db", busy_timeout_s=0.3)
    holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="locked"):
            state.put(Decision("r1", "A", 1.0, "strong", "route", "routed", "strong"))
        assert time.monotonic() - started < 2.0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        state.close()
