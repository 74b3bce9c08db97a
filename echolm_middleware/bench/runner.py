"""`echolm bench`: one run that serves the same requests with every system and scores them the same way.

Per workload: the warm-up pool is answered by the strong tier through an EchoLM proxy that shows no
examples (so every answer is the strong tier's and is admitted); those answers also fill the semantic
cache and, beside the cheap tier's answers to the same prompts, label the difficulty router. Then each
system serves the request set under the same load, on the deployment `deployments` gives it, and the
answers are scored by the workload's metric or, for open-ended prompts, by the pairwise judge against
strong-only's answer to the same request.
"""

from __future__ import annotations

import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echolm_middleware.bench.deployments import Deployment, deployments, serving, write_proxy_config
from echolm_middleware.bench.judge import PairVerdict, judge_pair, win_rate
from echolm_middleware.bench.load import LoadPass, closed_loop, open_loop
from echolm_middleware.bench.systems import DifficultyRouter, Embed, ModelSystem, ProxyChat, SemanticCache, System
from echolm_middleware.bench.workloads import Split, Workload, load_workload, split_workload
from echolm_middleware.config import load_settings
from echolm_middleware.datasets import QARecord
from echolm_middleware.demo import wait_for_engine
from echolm_middleware.proxy_process import ProxyProcess, running_proxy

# (warm-up pool, requests) per built-in workload: sized so a full run of every system stays under
# 40 minutes on 2 cores; Arena-Hard's long answers and judge calls make it the dearest per request.
DEFAULT_SIZES: dict[str, tuple[int, int]] = {"nq_open": (150, 60), "banking77": (150, 60), "arena_hard": (16, 12)}
USER_FILE_SIZES = (100, 40)


@dataclass
class BenchOptions:
    config: Path
    workloads: list[str]
    data_dir: Path
    run_dir: Path
    seed: int = 7
    clients: int = 2
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    rates: list[float] = field(default_factory=list)  # Poisson rates run for strong-only and EchoLM
    # Operating points; the first of each list is the system's default, reported under its own name.
    semantic_thresholds: list[float] = field(default_factory=lambda: [0.9, 0.8])
    difficulty_thresholds: list[float] = field(default_factory=lambda: [0.5, 0.8])
    echolm_cost_weights: list[float] = field(default_factory=list)  # empty: the config's value only
    replica_port: int = 8103


@dataclass
class SystemRun:
    """One system at one operating point on one workload."""

    system: str
    point: str
    deployment: str
    passes: list[LoadPass]
    quality: float | None = None
    secondary: dict[str, float] = field(default_factory=dict)
    verdicts: list[PairVerdict] = field(default_factory=list)


@dataclass
class WorkloadRun:
    workload: Workload
    split: Split
    runs: list[SystemRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Log = Callable[[str], None]


class Bench:
    def __init__(self, options: BenchOptions, log: Log = print) -> None:
        self.options = options
        self.log = log
        self.settings, self.raw = load_settings(options.config)
        self.cheap, self.strong = self.settings.tiers[0].name, self.settings.tiers[-1].name
        self.deployments = deployments(self.raw, self.cheap, self.strong, replica_port=options.replica_port)
        self.master_key = "sk-echolm-bench-" + secrets.token_hex(12)
        self._embedder: Embed | None = None

    # ---- plumbing ---------------------------------------------------------------------------------

    def embedder(self) -> Embed:
        """The same MiniLM embedder EchoLM uses, for the baselines that run in this process."""
        if self._embedder is None:
            from echolm_middleware.factory import EMBEDDERS

            self._embedder = EMBEDDERS[self.settings.embedder.backend](self.settings)
        return self._embedder

    def _env(self, store_dir: Path | None = None, **overrides: str) -> dict[str, str]:
        import os

        env = dict(os.environ)
        env["LITELLM_MASTER_KEY"] = self.master_key  # one tenant (this key) across every proxy of the run
        if store_dir is not None:
            env["ECHOLM_STORE__PATH"] = str(store_dir / "chroma")
            env["ECHOLM_STATE__PATH"] = str(store_dir / "state.db")
        env.update(overrides)
        return env

    def _proxy(self, deployment: Deployment, folder: Path, *, echolm: bool, env: dict[str, str]) -> Any:
        config = write_proxy_config(
            self.raw, deployment, folder / ("proxy-echolm.yaml" if echolm else "proxy.yaml"), with_echolm=echolm
        )
        return running_proxy(config, env=env, log_path=folder / ("proxy-echolm.log" if echolm else "proxy.log"))

    def _chat(self, proxy: ProxyProcess) -> ProxyChat:
        return ProxyChat(proxy.url, proxy.master_key)

    def _serve(self, system: System, workload: Workload, items: Sequence[QARecord], label: str) -> list[LoadPass]:
        passes = [closed_loop(system, workload, items, clients=self.options.clients, label=label)]
        return passes

    def _serve_with_rates(
        self, system: System, workload: Workload, items: Sequence[QARecord], label: str
    ) -> list[LoadPass]:
        passes = self._serve(system, workload, items, label)
        for rate in self.options.rates:
            passes.append(
                open_loop(system, workload, items, rate_rps=rate, seed=self.options.seed, label=f"{label} @{rate:g}/s")
            )
        return passes

    # ---- the run ----------------------------------------------------------------------------------

    def run(self) -> list[WorkloadRun]:
        return [self.run_workload(name) for name in self.options.workloads]

    def run_workload(self, name: str) -> WorkloadRun:
        workload = load_workload(name, self.options.data_dir)
        warm_n, request_n = self.options.sizes.get(workload.name) or DEFAULT_SIZES.get(workload.name, USER_FILE_SIZES)
        split = split_workload(workload.items, warm=warm_n, requests=request_n, seed=self.options.seed)
        result = WorkloadRun(workload, split)
        folder = self.options.run_dir / workload.name
        self.log(f"{workload.name}: {len(split.warm)} warm-up, {len(split.requests)} requests, {workload.metric}")

        mixed = self.deployments["mixed"]
        with serving(mixed, folder):
            warm_answers = self._warm(workload, split, mixed, folder / "warm")
            with self._proxy(mixed, folder, echolm=False, env=self._env()) as proxy:
                chat = self._chat(proxy)
                cheap, strong = ModelSystem("cheap", chat, self.cheap), ModelSystem("strong", chat, self.strong)
                labels = self._difficulty_labels(workload, split, warm_answers, cheap, chat)
                for threshold in self.options.semantic_thresholds:
                    cache = SemanticCache(
                        "semantic_cache", self.embedder(), threshold, strong, list(warm_answers.items())
                    )
                    result.runs.append(
                        SystemRun("semantic_cache", f"threshold {threshold:g}", mixed.name,
                                  self._serve(cache, workload, split.requests, f"semantic cache {threshold:g}"))
                    )  # fmt: skip
                for threshold in self.options.difficulty_thresholds:
                    router = DifficultyRouter("difficulty_router", self.embedder(), threshold, cheap, strong, labels)
                    result.runs.append(
                        SystemRun("difficulty_router", f"threshold {threshold:g}", mixed.name,
                                  self._serve(router, workload, split.requests, f"difficulty router {threshold:g}"))
                    )  # fmt: skip
            for weight in self.options.echolm_cost_weights or [self.settings.routing.cost_weight]:
                result.runs.append(self._echolm(workload, split, mixed, folder, weight))

        small = self.deployments["cheap_x2"]
        with serving(small, folder / "cheap_x2"), self._proxy(small, folder / "cheap_x2", echolm=False,
                                                              env=self._env()) as proxy:  # fmt: skip
            system = ModelSystem("small_only", self._chat(proxy), self.cheap)
            passes = self._serve(system, workload, split.requests, "small only")
            result.runs.append(SystemRun("small_only", "-", small.name, passes))

        big = self.deployments["strong_x2"]
        with serving(big, folder / "strong_x2"), self._proxy(big, folder / "strong_x2", echolm=False,
                                                             env=self._env()) as proxy:  # fmt: skip
            chat = self._chat(proxy)
            passes = self._serve_with_rates(ModelSystem("strong_only", chat, self.strong), workload, split.requests,
                                            "strong only")  # fmt: skip
            result.runs.append(SystemRun("strong_only", "-", big.name, passes))
            self._score(result, judge=chat)
        if not big.local:
            result.notes.append("tiers are not local: every system ran on the configured deployment")
        return result

    def _warm(self, workload: Workload, split: Split, mixed: Deployment, store_dir: Path) -> dict[str, str]:
        """The strong tier answers the warm-up pool through EchoLM with no examples: all admitted."""
        env = self._env(store_dir, ECHOLM_RETRIEVAL__K="0")
        with self._proxy(mixed, store_dir, echolm=True, env=env) as proxy:
            wait_for_engine(proxy, self.strong)
            system = ModelSystem("warm-up", self._chat(proxy), self.strong)
            warm = closed_loop(system, workload, split.warm, clients=self.options.clients, label="warm-up (strong)")
            answered = {item.prompt: a.answer for item, a in zip(split.warm, warm.answers, strict=True) if a.answer}
            _wait_recorded(store_dir / "state.db", len(answered))
        failed = len(split.warm) - len(answered)
        if failed:
            self.log(f"warning: {failed} warm-up requests got no answer")
        return answered

    def _difficulty_labels(
        self, workload: Workload, split: Split, warm_answers: Mapping[str, str], cheap: ModelSystem, chat: ProxyChat
    ) -> list[tuple[str, float]]:
        """1 where the cheap tier did as well as the strong one on a warm-up prompt (RouteLLM's label)."""
        items = [item for item in split.warm if item.prompt in warm_answers]
        answers = closed_loop(cheap, workload, items, clients=self.options.clients, label="labels (cheap)").answers
        labels = []
        for item, answer in zip(items, answers, strict=True):
            strong_answer = warm_answers[item.prompt]
            if workload.score is not None:
                label = float(workload.score(answer.answer, item) >= workload.score(strong_answer, item))
            else:
                verdict = judge_pair(_judge_call(chat, self.strong), item.prompt, answer.answer, strong_answer)
                label = float(verdict.outcome in ("win", "tie"))
            labels.append((item.prompt, label))
        return labels

    def _echolm(self, workload: Workload, split: Split, mixed: Deployment, folder: Path, weight: float) -> SystemRun:
        store_dir = folder / f"echolm-cost-{weight:g}"
        shutil.rmtree(store_dir, ignore_errors=True)
        shutil.copytree(folder / "warm", store_dir, ignore=shutil.ignore_patterns("*.log", "*.yaml"))
        env = self._env(store_dir, ECHOLM_ROUTING__COST_WEIGHT=str(weight))
        with self._proxy(mixed, store_dir, echolm=True, env=env) as proxy:
            wait_for_engine(proxy, self.cheap)
            system = ModelSystem("echolm", self._chat(proxy), self.strong)
            passes = self._serve_with_rates(system, workload, split.requests, f"echolm cost weight {weight:g}")
        return SystemRun("echolm", f"cost weight {weight:g}", mixed.name, passes)

    def _score(self, result: WorkloadRun, judge: ProxyChat) -> None:
        workload, items = result.workload, result.split.requests
        baseline = next(r for r in result.runs if r.system == "strong_only").passes[0].answers
        for run in result.runs:
            answers = run.passes[0].answers
            if workload.score is not None:
                run.quality = _mean([workload.score(a.answer, item) for a, item in zip(answers, items, strict=True)])
                run.secondary = {
                    name: _mean([metric(a.answer, item) for a, item in zip(answers, items, strict=True)])
                    for name, metric in workload.secondary.items()
                }
                continue
            if run.system == "strong_only":
                run.quality = 0.5  # strong-only against itself: every pair identical, a tie
                continue
            call = _judge_call(judge, self.strong)
            run.verdicts = [
                judge_pair(call, item.prompt, a.answer, b.answer)
                for a, b, item in zip(answers, baseline, items, strict=True)
            ]
            run.quality = win_rate(run.verdicts).rate


def _judge_call(chat: ProxyChat, model: str) -> Callable[[list[dict[str, str]]], str]:
    def call(messages: list[dict[str, str]]) -> str:
        return chat(model, messages, max_tokens=64).answer

    return call


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _wait_recorded(state_db: Path, expected: int, timeout_s: float = 60.0) -> None:
    """Admissions are written after the response is sent: wait for them before the proxy stops."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(state_db) as db:
                done = db.execute("SELECT COUNT(*) FROM decisions WHERE recorded_by IS NOT NULL").fetchone()[0]
        except sqlite3.OperationalError:
            done = 0
        if done >= expected:
            return
        time.sleep(0.5)
