"""The upkeep on the real parts: the strong local tier via litellm, MiniLM, embedded Chroma, `echolm replay`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from echolm_middleware.config import Settings
from echolm_middleware.core.engine import example_id
from echolm_middleware.core.types import Decision
from echolm_middleware.factory import build_engine, build_upkeep
from tests.integration.conftest import CONFIG, ROOT, STRONG, LocalTiers, settings_for_tests
from tests.integration.upkeep_seed import DEGRADED

pytestmark = pytest.mark.integration


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["ECHOLM_STORE__PATH"] = str(tmp_path / "chroma")
    env["ECHOLM_STATE__PATH"] = str(tmp_path / "state.db")
    env["ECHOLM_UPKEEP__MAX_ANSWER_TOKENS"] = "48"  # short answers keep real generations quick
    env.update(extra)
    return env


def _settings(tmp_path: Path, **upkeep: Any) -> Settings:
    settings: Settings = settings_for_tests().stored_under(tmp_path)
    return settings.model_copy(
        update={"upkeep": settings.upkeep.model_copy(update={"max_answer_tokens": 48, **upkeep})}
    )


def _in_process(local_tiers: LocalTiers, tmp_path: Path, **upkeep: Any) -> Any:
    settings = _settings(tmp_path, **upkeep)
    engine = build_engine(settings, local_tiers.model_list)
    return build_upkeep(settings, local_tiers.model_list, engine=engine)


def _degrade(upkeep: Any, prompt: str, gain: float, tenant: str = "default") -> str:
    upkeep.engine.admit(tenant, prompt, DEGRADED, "cheap")
    key = example_id(tenant, prompt)
    upkeep.engine.store.modify(
        tenant,
        [key],
        lambda e: replace(e, gain=gain, uses=40, selected=40, quality=0.3, created_at=time.time() - 10 * 86400),
    )
    return key


def test_a_pass_upgrades_a_degraded_example_with_the_strong_tiers_answer(
    local_tiers: LocalTiers, tmp_path: Path
) -> None:
    upkeep = _in_process(local_tiers, tmp_path)
    key = _degrade(upkeep, "What is the capital of Japan?", gain=0.8)

    report = upkeep.run_pass()

    (step,) = report.steps
    assert step.outcome == "upgraded" and step.tokens > 0
    (example,) = [e for e in upkeep.engine.store.examples("default") if e.id == key]
    assert example.answer != DEGRADED and "tokyo" in example.answer.lower()
    assert (example.source_tier, example.replays, example.gain) == (STRONG, 1, 0.0)


def test_the_budget_is_never_exceeded_on_real_token_counts(local_tiers: LocalTiers, tmp_path: Path) -> None:
    upkeep = _in_process(local_tiers, tmp_path, budget_tokens=250)
    prompts = ["What is the capital of Japan?", "What is the chemical symbol for gold?", "Who wrote Hamlet?"]
    for rank, prompt in enumerate(prompts):
        _degrade(upkeep, prompt, gain=0.9 - rank * 0.1)

    report = upkeep.run_pass()

    upgraded = [s for s in report.steps if s.outcome == "upgraded"]
    assert 1 <= len(upgraded) < len(prompts)  # the budget bought some replays, not all
    assert report.tokens_spent <= 250


def test_coverage_answers_a_cluster_of_misses_with_the_strong_tier(local_tiers: LocalTiers, tmp_path: Path) -> None:
    upkeep = _in_process(local_tiers, tmp_path)
    now = time.time()
    for n, query in enumerate(["How tall is Mount Everest?", "how tall is mount everest in meters", "Everest height?"]):
        upkeep.state.put(
            Decision(
                request_id=f"miss-{n}", tenant="acme", created_at=now, requested_model=STRONG, action="route",
                reason="routed", chosen_tier="cheap", query=query,
            )
        )  # fmt: skip

    report = upkeep.run_pass()

    coverage = [s for s in report.steps if s.kind == "coverage"]
    assert [s.outcome for s in coverage] == ["admitted"] and coverage[0].cluster_size >= 2
    (stored,) = upkeep.engine.store.examples("acme")
    assert stored.prompt == "How tall is Mount Everest?" and stored.answer.strip()
    assert stored.source_tier == STRONG
    assert upkeep.engine.store.examples("default") == []


def test_eviction_keeps_the_highest_value_set_in_real_chroma(local_tiers: LocalTiers, tmp_path: Path) -> None:
    upkeep = _in_process(local_tiers, tmp_path, max_entries=3, budget_tokens=0)
    store = upkeep.engine.store
    values = {f"Question {n} about the sea?": float(n) for n in range(6)}
    for prompt, value in values.items():
        upkeep.engine.admit("default", prompt, "an answer", STRONG)
        store.modify(
            "default", [example_id("default", prompt)], lambda e, v=value: replace(e, value=v, value_at=time.time())
        )

    report = upkeep.run_pass()

    assert report.evicted == {"default": 3}
    assert sorted(e.prompt for e in store.examples("default")) == [f"Question {n} about the sea?" for n in (3, 4, 5)]


# ---- `echolm replay` as processes --------------------------------------------------------------------


def _seed(tmp_path: Path, count: int) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.upkeep_seed", str(CONFIG), str(count)],
        env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def _replay(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "echolm_middleware.cli.main", "replay", "--config", str(CONFIG), *args],
        env=_env(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _answers(tmp_path: Path, prompts: list[str]) -> dict[str, str]:
    """Read every seeded example's answer in a process of its own (Chroma's embedded client is per process)."""
    script = (
        "import json,sys\n"
        "from echolm_middleware.config import load_settings\n"
        "from echolm_middleware.factory import STORES\n"
        "s, _ = load_settings(__import__('pathlib').Path(sys.argv[1]))\n"
        "print(json.dumps({e.prompt: e.answer for e in STORES[s.store.backend](s).examples('default')}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(CONFIG)], env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True,
        timeout=300, check=True,
    )  # fmt: skip
    answers: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(answers) == sorted(prompts)  # nothing lost, nothing added
    return answers


def _steps_done(tmp_path: Path) -> int:
    try:
        with sqlite3.connect(tmp_path / "state.db") as db:
            return int(db.execute("SELECT COUNT(*) FROM upkeep_steps WHERE done = 1").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_two_replays_at_once_run_one_pass(local_tiers: LocalTiers, tmp_path: Path) -> None:
    prompts = _seed(tmp_path, 6)  # enough steps that the first pass still runs when the second starts
    first = _replay(tmp_path, "--json")
    deadline = time.monotonic() + 120
    while _steps_done(tmp_path) == 0 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the first pass holds the running lease by now
    second = _replay(tmp_path)

    _, second_err = second.communicate(timeout=300)
    first_out, _ = first.communicate(timeout=600)

    assert second.returncode == 3 and "another upkeep pass is running" in second_err
    assert first.returncode == 0
    assert [s["outcome"] for s in json.loads(first_out)["steps"]] == ["upgraded"] * 6
    assert all(answer != DEGRADED for answer in _answers(tmp_path, prompts).values())


def test_a_replay_killed_midway_leaves_a_whole_store_and_a_rerun_finishes_it(
    local_tiers: LocalTiers, tmp_path: Path
) -> None:
    prompts = _seed(tmp_path, 4)
    victim = _replay(tmp_path)
    deadline = time.monotonic() + 300
    while _steps_done(tmp_path) < 1 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "the pass ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)  # reaps it and closes its pipes

    after_kill = _answers(tmp_path, prompts)
    finished = _steps_done(tmp_path)
    assert 1 <= finished < 4
    # Every example holds its old answer or a whole new one, never anything in between.
    upgraded = [p for p, a in after_kill.items() if a != DEGRADED]
    assert len(upgraded) in (finished, finished + 1)  # the step in flight may have written, unmarked

    rerun = _replay(tmp_path, "--json")
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    report = json.loads(out)
    assert report["resumed"] is True and len(report["steps"]) == 4 - finished
    assert all(answer != DEGRADED for answer in _answers(tmp_path, prompts).values())
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM upkeep_steps").fetchone()[0] == 0  # the journal is closed
