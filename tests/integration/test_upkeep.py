"""The upkeep on the real parts: the strong local tier via litellm, MiniLM, embedded Chroma, `echolm upkeep`."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from echolm_middleware.config import Settings
from echolm_middleware.core.engine import admitted_id
from echolm_middleware.core.types import Completion, Decision
from echolm_middleware.factory import State, build_engine, build_state, build_upkeep
from echolm_middleware.upkeep import Upkeep
from tests.integration.conftest import (
    CONFIG,
    ROOT,
    STRONG,
    LocalTiers,
    ProxyFactory,
    ProxyUnderTest,
    ask,
    settings_for_tests,
)
from tests.integration.upkeep_seed import DEGRADED
from tests.integration.workers import metric_total, metrics_text

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


def _with_state(local_tiers: LocalTiers, tmp_path: Path, **upkeep: Any) -> tuple[Upkeep, State]:
    """An upkeep over a real engine, and the state database the two share."""
    settings = _settings(tmp_path, **upkeep)
    state = build_state(settings)
    engine = build_engine(settings, local_tiers.model_list, state=state)
    return build_upkeep(settings, local_tiers.model_list, engine=engine, state=state), state


def _in_process(local_tiers: LocalTiers, tmp_path: Path, **upkeep: Any) -> Upkeep:
    return _with_state(local_tiers, tmp_path, **upkeep)[0]


def _degrade(upkeep: Upkeep, prompt: str, gain: float, tenant: str = "default") -> str:
    upkeep.engine.admit(tenant, prompt, DEGRADED, "cheap")
    key = admitted_id(tenant, prompt)
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


class WithAWrongSample:
    """The real strongest tier, except that the second sample says "Osaka": the samples then differ for sure,
    and the real tier, as judge, must name the right one."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.prompts: list[str] = []

    def complete(
        self, tier: str, prompt: str, *, max_tokens: int, temperature: float, instructions: str = ""
    ) -> Completion:
        self.prompts.append(prompt)
        completion: Completion = self.real.complete(
            tier, prompt, max_tokens=max_tokens, temperature=temperature, instructions=instructions
        )
        return replace(completion, text="Osaka") if len(self.prompts) == 2 else completion


def test_with_keep_judge_the_strong_tier_names_the_right_one_of_differing_samples(
    local_tiers: LocalTiers, tmp_path: Path
) -> None:
    upkeep = _in_process(local_tiers, tmp_path, samples=3, keep="judge")
    key = _degrade(upkeep, "What is the capital of Japan?", gain=0.8)
    completer = upkeep.completer = WithAWrongSample(upkeep.completer)

    (step,) = upkeep.run_pass().steps

    assert step.outcome == "upgraded"
    assert len(completer.prompts) == 4  # three samples, then the judge
    assert re.search(r"^\d\. Osaka$", completer.prompts[-1], flags=re.MULTILINE)  # listed for the judge
    (example,) = [e for e in upkeep.engine.store.examples("default") if e.id == key]
    assert "tokyo" in example.answer.lower()


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
    upkeep, state = _with_state(local_tiers, tmp_path)
    now = time.time()
    for n, query in enumerate(["How tall is Mount Everest?", "how tall is mount everest in meters", "Everest height?"]):
        state.put(
            Decision(
                request_id=f"miss-{n}", tenant="acme", created_at=now, requested_model=STRONG, action="route",
                reason="routed", tier="cheap", query=query,
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
            "default", [admitted_id("default", prompt)], lambda e, v=value: replace(e, value=v, value_at=time.time())
        )

    report = upkeep.run_pass()

    assert report.evicted == {"default": 3}
    assert sorted(e.prompt for e in store.examples("default")) == [f"Question {n} about the sea?" for n in (3, 4, 5)]


# ---- `echolm upkeep` as processes --------------------------------------------------------------------


def _seed(tmp_path: Path, count: int, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.upkeep_seed", str(CONFIG), str(count)],
        env=env or _env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def _upkeep_command(tmp_path: Path, *args: str, name: str = "upkeep") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "echolm_middleware.cli.main", name, "--config", str(CONFIG), *args],
        env=_env(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _answers(tmp_path: Path, prompts: list[str], env: dict[str, str] | None = None) -> dict[str, str]:
    """Read every seeded example's answer in a process of its own (Chroma's embedded client is per process)."""
    script = (
        "import json,sys\n"
        "from echolm_middleware.config import load_settings\n"
        "from echolm_middleware.factory import STORES\n"
        "s, _ = load_settings(__import__('pathlib').Path(sys.argv[1]))\n"
        "print(json.dumps({e.prompt: e.answer for e in STORES[s.store.backend](s).examples('default')}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(CONFIG)], env=env or _env(tmp_path), cwd=ROOT, capture_output=True, text=True,
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


def test_two_upkeep_commands_at_once_run_one_pass(local_tiers: LocalTiers, tmp_path: Path) -> None:
    prompts = _seed(tmp_path, 6)  # enough steps that the first pass still runs when the second starts
    first = _upkeep_command(tmp_path, "--json")
    deadline = time.monotonic() + 120
    while _steps_done(tmp_path) == 0 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the first pass holds the running lease by now
    second = _upkeep_command(tmp_path, name="replay")  # the old name reaches the same command and lease

    _, second_err = second.communicate(timeout=300)
    first_out, _ = first.communicate(timeout=600)

    assert second.returncode == 3 and "another upkeep pass is running" in second_err
    assert first.returncode == 0
    assert [s["outcome"] for s in json.loads(first_out)["steps"]] == ["upgraded"] * 6
    assert all(answer != DEGRADED for answer in _answers(tmp_path, prompts).values())


def test_a_pass_killed_midway_leaves_a_whole_store_and_a_rerun_finishes_it(
    local_tiers: LocalTiers, tmp_path: Path
) -> None:
    prompts = _seed(tmp_path, 4)
    victim = _upkeep_command(tmp_path)
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

    rerun = _upkeep_command(tmp_path, "--json")
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    report = json.loads(out)
    assert report["resumed"] is True and len(report["steps"]) == 4 - finished
    assert all(answer != DEGRADED for answer in _answers(tmp_path, prompts).values())
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM upkeep_steps").fetchone()[0] == 0  # the journal is closed


# ---- the scheduled job in two proxy workers ---------------------------------------------------------


def _engine_ready(proxy: ProxyUnderTest, timeout_s: float = 120.0) -> float:
    """Wait until the proxy's engine (and with it the upkeep scheduler) is built; returns when it was seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, headers = ask(proxy, "ping", max_tokens=1, extra_body={"metadata": {"echolm_bypass": True}})
        if headers.get("x-echolm-request-id"):
            return time.time()
        time.sleep(0.5)
    raise AssertionError(f"the engine never came up:\n{proxy.process.log_tail()}")


def test_two_proxy_workers_run_one_scheduled_pass_per_period(start_proxy_for: ProxyFactory, tmp_path: Path) -> None:
    """Two proxy processes with `upkeep.schedule_minutes` on one state database: one pass per period.

    Each worker has a Chroma directory of its own (embedded Chroma is one process's at a time), seeded
    with the same degraded examples, and both share the state database that holds the period's lease.
    Whichever worker wins the period upgrades its own store; the other's store must stay untouched.
    """
    period_s = 15.0  # firings come 3 s into each period (scheduling.first_firing_anchor)
    envs: dict[str, dict[str, str]] = {}
    for name in ("a", "b"):
        envs[name] = _env(
            tmp_path,
            ECHOLM_STORE__PATH=str(tmp_path / name / "chroma"),
            ECHOLM_UPKEEP__SCHEDULE_MINUTES=str(period_s / 60),
        )
    prompts = {name: _seed(tmp_path, 2, env) for name, env in envs.items()}

    with ThreadPoolExecutor(2) as pool:  # started side by side: each spends about 10 s importing LiteLLM
        started = pool.map(lambda name: start_proxy_for(state_dir=tmp_path / name, extra_env=envs[name]), envs)
        workers = dict(zip(envs, started, strict=True))
        ready = max(pool.map(_engine_ready, workers.values()))
    # Both schedulers run by now, and both fire 3 s into the next period, whenever each one started.
    both_fire = (ready // period_s + 1) * period_s + 3.0
    both = str(int(both_fire // period_s))

    def skipped(name: str) -> float:
        process = workers[name].process
        return metric_total(metrics_text(process, process.master_key), "echolm_upkeep_passes_total", outcome="skipped")

    def period_settled() -> bool:
        """Every worker has either logged its finished pass for the period both fired in, or stood aside."""
        ran = {
            name: f"for period {both}:" in (tmp_path / name / "proxy.log").read_text(errors="replace")
            for name in workers
        }
        return any(ran.values()) and all(ran[name] or skipped(name) >= 1 for name in workers)

    # Polled rather than slept: the winner's pass (two answers from the strong tier) takes a few seconds.
    while time.time() < both_fire or not period_settled():
        assert time.time() < both_fire + 60, "the period both workers fired in did not settle within 60 s"
        time.sleep(1.0)
    stood_aside = {name: skipped(name) for name in workers}
    for worker in workers.values():
        worker.stop()

    def log_of(name: str) -> str:
        log = (tmp_path / name / "proxy.log").read_text(errors="replace")
        assert "echolm upkeep pass failed" not in log
        return log

    logs = {name: log_of(name) for name in workers}
    logged = {name: re.findall(r"echolm upkeep pass \S+ for period (\d+)", log) for name, log in logs.items()}
    periods = [period for found in logged.values() for period in found]
    assert len(periods) == len(set(periods)), logged  # one pass per period between the two
    # The period both fired in went to one worker, which upgraded its own store; the other stood aside.
    (winner,) = [name for name, found in logged.items() if both in found]
    (loser,) = [name for name in workers if name != winner]
    assert stood_aside[loser] >= 1, stood_aside  # it fired too, and found the period's lease taken
    assert all(a != DEGRADED for a in _answers(tmp_path, prompts[winner], envs[winner]).values())
    if not logged[loser]:
        assert all(a == DEGRADED for a in _answers(tmp_path, prompts[loser], envs[loser]).values())
