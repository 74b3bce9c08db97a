"""`echolm bench`: one run that serves the same requests with every system and scores them the same way.

Per workload: the warm-up pool is answered by the strong tier through an EchoLM proxy that shows no
examples (so every answer is the strong tier's and is admitted); those answers also fill the semantic
cache and, beside the cheap tier's answers to the same prompts, label the difficulty router. Then each
system serves the request set under the same load, on the deployment `deployments` gives it, and the
answers are scored by the workload's metric or, for open-ended prompts, by the pairwise judge against
strong-only's answer to the same request.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from echolm_lab.bench.deployments import REPLICA_PORTS, bench_deployment, serving, write_proxy_config
from echolm_lab.bench.load import LoadPass, closed_loop, open_loop
from echolm_lab.bench.systems import (
    Answered,
    DifficultyRouter,
    Embed,
    ModelSystem,
    ProxyChat,
    SemanticCache,
    System,
)
from echolm_lab.bench.workloads import Split, Workload, load_workload, split_workload
from echolm_lab.datasets import QARecord, load_records
from echolm_lab.demo import wait_for_engine
from echolm_lab.proxy_process import ProxyProcess, running_proxy
from echolm_middleware.config import CONFIG_SECTION, load_settings, settings_from_mapping
from echolm_middleware.errors import ConfigError, EchoLMError
from echolm_middleware.quality_target.judge import PairVerdict, judge_pair, win_rate
from echolm_middleware.quality_target.shadow import agreement

# (warm-up pool, requests) per built-in workload. On 2 cores with two cost weights, a quality target and
# two Poisson rates (benchmarks/results/full-2026-12-01) NQ-open took 13 minutes and Banking77 11 at
# 80/30, and Arena-Hard at 6/5 more than both (25): a judgement (both orders) took about 27 s and a
# 128-token answer 20-25 s on the 1-thread 1.5B strong tier. Arena-Hard now has 4 requests: two clients
# answer them in two rounds, where 5 took three with one server idle in the last.
DEFAULT_SIZES: dict[str, tuple[int, int]] = {"nq_open": (80, 30), "banking77": (80, 30), "arena_hard": (6, 4)}
USER_FILE_SIZES = (100, 40)
# The judge prompt's character budget (about 500 tokens), shared by the prompt and both answers: a
# judgement (two calls) took about 33 s at 3,200 characters and about 27 s at 2,000 on a 1-thread 1.5B judge.
JUDGE_MAX_CHARS = 2000
# The bench's local 1.5B judge opens its reply with the verdict (a tag or the scale's words, as in
# "B is clearly better. Answer B ..."; 12 of 12 calls on Arena-Hard pairs), then reasons until cut off:
# 24 tokens keep the verdict and save about 6 s a call. A judge that reasons first would show up as
# unparsed verdicts in the report.
JUDGE_MAX_TOKENS = 24


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
    rate_requests: int = 30  # the first requests of the set that each Poisson pass sends
    open_loop_warmup_s: float = 60.0  # a Poisson pass's first seconds: served, not timed
    # Operating points; the first of each list is the system's default, reported under its own name.
    semantic_thresholds: list[float] = field(default_factory=lambda: [0.9, 0.8])
    # The difficulty router's points as the share of requests it sends to the strong tier; its threshold is
    # calibrated on the request set's predictions, as RouteLLM calibrates for a target share of strong calls.
    difficulty_strong_shares: list[float] = field(default_factory=lambda: [0.5, 0.25])
    echolm_cost_weights: list[float] = field(default_factory=list)  # empty: the config's value only
    # EchoLM points that hold a quality target on the fly; the share of cheap answers compared is raised
    # from the product's 5% so that a few dozen requests give the controller something to act on.
    quality_targets: list[float] = field(default_factory=list)
    # The same on judged workloads, where the target is a win rate (parity 0.5), not an agreement.
    win_rate_targets: list[float] = field(default_factory=list)
    # Further EchoLM points, each a set of config overrides ("routing.load_signal=ema,retrieval.k=5").
    echolm_points: list[str] = field(default_factory=list)
    target_sample_share: float = 0.3
    sweep_judged: bool = False
    replica_ports: tuple[int, int] = REPLICA_PORTS
    # The pool and the request set from files of their own (data never seen), else a split of the workload.
    pool_file: Path | None = None
    requests_file: Path | None = None


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
    # The workload's metric on each pass's own answers (index-aligned with `passes`; reference workloads
    # only): a Poisson pass routes under other load than the closed loop, so its quality is its own.
    pass_quality: list[float] = field(default_factory=list)


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
        for spec in options.echolm_points:  # a bad point stops the run now, not half an hour in
            check_overrides(self.raw, point_overrides(spec))
        self.cheap, self.strong = self.settings.tiers[0].name, self.settings.tiers[-1].name
        self.deployment = bench_deployment(self.raw, self.cheap, self.strong, replica_ports=options.replica_ports)
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
        env = dict(os.environ)
        env["LITELLM_MASTER_KEY"] = self.master_key  # one tenant (this key) across every proxy of the run
        if store_dir is not None:
            env["ECHOLM_STORE__PATH"] = str(store_dir / "chroma")
            env["ECHOLM_STATE__PATH"] = str(store_dir / "state.db")
        env.update(overrides)
        return env

    def _proxy(self, folder: Path, *, echolm: bool, env: dict[str, str], widen: str | None = None) -> Any:
        config = write_proxy_config(
            self.raw,
            self.deployment,
            folder / ("proxy-echolm.yaml" if echolm else "proxy.yaml"),
            with_echolm=echolm,
            widen=widen,
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
        """The closed loop and each Poisson pass, for a system that keeps nothing between passes (strong-only)."""
        passes = self._serve(system, workload, items, label)
        passes += [self._poisson(system, workload, items, rate, label) for rate in self._rates(workload)]
        return passes

    def _poisson(
        self, system: System, workload: Workload, items: Sequence[QARecord], rate: float, label: str
    ) -> LoadPass:
        # Where latency is measured against the rate, a prefix of the set is enough and keeps each pass short.
        prefix = items[: self.options.rate_requests]
        return open_loop(
            system, workload, prefix, rate_rps=rate, seed=self.options.seed, label=f"{label} @{rate:g}/s",
            warmup_s=self.options.open_loop_warmup_s,
        )  # fmt: skip

    # ---- the run ----------------------------------------------------------------------------------

    def run(self, after_each: Callable[[list[WorkloadRun]], None] | None = None) -> list[WorkloadRun]:
        """Every workload on one set of servers and one plain proxy; EchoLM's proxies come and go per point.

        `after_each` sees the results so far after every workload, so a long run keeps what it measured.
        """
        results: list[WorkloadRun] = []
        with (
            serving(self.deployment, self.options.run_dir / "tiers"),
            self._proxy(self.options.run_dir, echolm=False, env=self._env()) as proxy,
        ):
            chat = self._chat(proxy)
            for name in self.options.workloads:
                results.append(self.run_workload(name, chat))
                if after_each is not None:
                    after_each(results)
        return results

    def _where(self, servers: str) -> str:
        return servers if self.deployment.local else "tiers as configured"

    def run_workload(self, name: str, chat: ProxyChat) -> WorkloadRun:
        workload = load_workload(name, self.options.data_dir)
        warm_n, request_n = self.options.sizes.get(workload.name) or DEFAULT_SIZES.get(workload.name, USER_FILE_SIZES)
        split = self._split(workload, warm_n, request_n)
        result = WorkloadRun(workload, split)
        folder = self.options.run_dir / workload.name
        self.log(f"{workload.name}: {len(split.warm)} warm-up, {len(split.requests)} requests, {workload.metric}")
        mixed = self._where("one cheap + one strong server")

        warm_answers = self._warm(workload, split, folder / "warm")
        cheap, strong = ModelSystem("cheap", chat, self.cheap), ModelSystem("strong", chat, self.strong)
        labels = self._difficulty_labels(
            workload, split, warm_answers, ModelSystem("cheap", chat, self.deployment.cheap_x2), chat
        )
        # Every point of an open-ended workload costs 2 judge calls per request: the sweeps stop at each
        # system's default point there unless asked (`sweep_judged`).
        semantic, difficulty, weights = self._points(workload)
        # The semantic cache never calls the cheap tier: its misses get both cores, as strong-only's requests do.
        strong_x2 = ModelSystem("strong", chat, self.deployment.strong_x2)
        for threshold in semantic:
            cache = SemanticCache("semantic_cache", self.embedder(), threshold, strong_x2, list(warm_answers.items()))
            passes = self._serve(cache, workload, split.requests, f"semantic cache {threshold:g}")
            where = self._where("two strong servers")
            result.runs.append(SystemRun("semantic_cache", f"threshold {threshold:g}", where, passes))
        for share in difficulty:
            router = DifficultyRouter("difficulty_router", self.embedder(), 0.0, cheap, strong, labels)
            threshold = router.calibrate([item.prompt for item in split.requests], strong_share=share)
            passes = self._serve(router, workload, split.requests, f"difficulty router {share:g}")
            point = f"strong share {share:g} (threshold {threshold:.3f})"
            result.runs.append(SystemRun("difficulty_router", point, mixed, passes))
        for index, weight in enumerate(weights):
            point = f"cost weight {weight:g}"
            settings = {"ECHOLM_ROUTING__COST_WEIGHT": str(weight)}
            passes = self._echolm(workload, split, folder, point, with_rates=index == 0, **settings)
            result.runs.append(SystemRun("echolm", point, mixed, passes))
        for spec in self.options.echolm_points:
            passes = self._echolm(workload, split, folder, spec, with_rates=False, **point_overrides(spec))
            result.runs.append(SystemRun("echolm", spec, mixed, passes))
        for target in self.targets(workload):
            point = f"quality target {target:g}"
            passes = self._echolm(
                workload, split, folder, point, with_rates=False,
                ECHOLM_ROUTING__QUALITY_TARGET__TARGET=str(target),
                ECHOLM_ROUTING__QUALITY_TARGET__METRIC="judge" if workload.judged else "agreement",
                ECHOLM_ROUTING__QUALITY_TARGET__SAMPLE_SHARE=str(self.options.target_sample_share),
                ECHOLM_ROUTING__QUALITY_TARGET__MAX_ANSWER_TOKENS=str(workload.max_tokens),
            )  # fmt: skip
            result.runs.append(SystemRun("echolm", point, mixed, passes))

        small = ModelSystem("small_only", chat, self.deployment.cheap_x2)
        passes = self._serve(small, workload, split.requests, "small only")
        result.runs.append(SystemRun("small_only", "-", self._where("two cheap servers"), passes))
        strong_only = ModelSystem("strong_only", chat, self.deployment.strong_x2)
        passes = self._serve_with_rates(strong_only, workload, split.requests, "strong only")
        result.runs.append(SystemRun("strong_only", "-", self._where("two strong servers"), passes))
        self._score(result, chat)
        if not self.deployment.local:
            result.notes.append("tiers are not local: every system ran on the tiers as configured")
        return result

    def _split(self, workload: Workload, warm_n: int, request_n: int) -> Split:
        """A seeded split of the workload, with the pool or the requests taken from files where given."""
        pool_file, requests_file, seed = self.options.pool_file, self.options.requests_file, self.options.seed
        if pool_file is None and requests_file is None:
            return split_workload(workload.items, warm=warm_n, requests=request_n, seed=seed)
        if pool_file is not None:
            warm = _first_unique(load_records(pool_file), warm_n)
        else:
            warm = split_workload(workload.items, warm=warm_n, requests=0, seed=seed).warm
        asked = {item.prompt for item in warm}
        if requests_file is not None:
            requests = _first_unique(load_records(requests_file), request_n)
        else:
            others = [item for item in workload.items if item.prompt not in asked]
            requests = split_workload(others, warm=0, requests=request_n, seed=seed).requests
        shared = asked & {item.prompt for item in requests}
        if shared:
            raise EchoLMError(f"the pool and the requests share {len(shared)} prompts, e.g. {sorted(shared)[0]!r}")
        return Split(warm=warm, requests=requests)

    def targets(self, workload: Workload) -> list[float]:
        """Quality-target points: agreement levels where there are references, win rates where judged."""
        return list(self.options.win_rate_targets if workload.judged else self.options.quality_targets)

    def _rates(self, workload: Workload) -> list[float]:
        """Poisson rates run on reference workloads only: on open-ended ones a single answer takes about as
        long as the p95 bound, so no rate would hold and every pass would cost minutes."""
        return [] if workload.judged else list(self.options.rates)

    def _points(self, workload: Workload) -> tuple[list[float], list[float], list[float]]:
        options = self.options
        points = (
            list(options.semantic_thresholds),
            list(options.difficulty_strong_shares),
            list(options.echolm_cost_weights or [self.settings.routing.cost_weight]),
        )
        if workload.judged and not options.sweep_judged:
            return points[0][:1], points[1][:1], points[2][:1]
        return points

    def _warm(self, workload: Workload, split: Split, store_dir: Path) -> dict[str, str]:
        """The strong tier answers the warm-up pool through EchoLM with no examples: all admitted.

        Nothing here is timed, so the strong tier gets both strong servers."""
        env = self._env(store_dir, ECHOLM_RETRIEVAL__K="0", ECHOLM_ROUTING__REUSE__ENABLED="false")
        with self._proxy(store_dir, echolm=True, env=env, widen=self.strong) as proxy:
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
        # Not timed: both cheap servers answer.
        answers = closed_loop(cheap, workload, items, clients=self.options.clients, label="labels (cheap)").answers
        strong_answers = [warm_answers[item.prompt] for item in items]
        if workload.score is not None:
            good_enough = [
                workload.score(cheap.answer, item) >= workload.score(strong_answer, item)
                for item, cheap, strong_answer in zip(items, answers, strong_answers, strict=True)
            ]
        else:
            baseline = [Answered(a, self.strong, 0.0, None) for a in strong_answers]
            verdicts = self._judge_all(chat, items, answers, baseline, label="labels (judge)")
            good_enough = [verdict.outcome in ("win", "tie") for verdict in verdicts]
        return [(item.prompt, float(label)) for item, label in zip(items, good_enough, strict=True)]

    def _echolm(
        self, workload: Workload, split: Split, folder: Path, point: str, *, with_rates: bool, **settings: str
    ) -> list[LoadPass]:
        """One operating point (settings as ECHOLM_ overrides): the closed loop and, `with_rates`, each
        Poisson pass, every one on its own copy of the warm store. A later pass on the same store would
        find the earlier pass's answers to the very same prompts and flatter EchoLM."""
        label = f"echolm {point}"

        def closed(system: System) -> list[LoadPass]:
            return self._serve(system, workload, split.requests, label)

        passes = self._echolm_pass(folder, point, settings, closed)
        for rate in self._rates(workload) if with_rates else []:

            def poisson(system: System, rate: float = rate) -> list[LoadPass]:
                return [self._poisson(system, workload, split.requests, rate, label)]

            passes += self._echolm_pass(folder, f"{point} at {rate:g} rps", settings, poisson)
        return passes

    def _echolm_pass(
        self, folder: Path, name: str, settings: Mapping[str, str], serve: Callable[[System], list[LoadPass]]
    ) -> list[LoadPass]:
        store_dir = folder / ("echolm-" + name.replace(" ", "-"))
        shutil.rmtree(store_dir, ignore_errors=True)
        shutil.copytree(folder / "warm", store_dir, ignore=shutil.ignore_patterns("*.log", "*.yaml"))
        with self._proxy(store_dir, echolm=True, env=self._env(store_dir, **settings)) as proxy:
            wait_for_engine(proxy, self.cheap)
            return serve(ModelSystem("echolm", self._chat(proxy), self.strong))

    def _score(self, result: WorkloadRun, chat: ProxyChat) -> None:
        """Reference metric per answer, or the judge (on both strong servers) against strong-only's answer."""
        workload, items = result.workload, result.split.requests
        baseline = next(r for r in result.runs if r.system == "strong_only").passes[0].answers
        for run in result.runs:
            answers = run.passes[0].answers
            if workload.score is not None:
                score = workload.score
                # A Poisson pass answers a prefix of the request set (`rate_requests`); the first pass, the
                # closed loop, answers all of it and gives the run's quality.
                run.pass_quality = [
                    _mean([score(a.answer, item) for a, item in zip(p.answers, items[: len(p.answers)], strict=True)])
                    for p in run.passes
                ]
                run.quality = run.pass_quality[0]
                run.secondary = {
                    name: _mean([metric(a.answer, item) for a, item in zip(answers, items, strict=True)])
                    for name, metric in workload.secondary.items()
                }
                # What a quality target on "agreement" holds: token F1 against strong-only's own answer.
                run.secondary["agreement_with_strong_only"] = _mean(
                    [agreement(a.answer, b.answer) for a, b in zip(answers, baseline, strict=True)]
                )
                continue
            if run.system == "strong_only":
                run.quality = 0.5  # strong-only against itself: every pair identical, a tie
                continue
            run.verdicts = self._judge_all(chat, items, answers, baseline, label=f"judge {run.system} {run.point}")
            run.quality = win_rate(run.verdicts).rate

    def _judge_all(
        self,
        chat: ProxyChat,
        items: Sequence[QARecord],
        answers: Sequence[Answered],
        baseline: Sequence[Answered],
        *,
        label: str,
    ) -> list[PairVerdict]:
        """Judge every pair, `clients` at a time, on both strong servers."""
        call = _judge_call(chat, self.deployment.strong_x2)

        def one(index: int) -> PairVerdict:
            return judge_pair(
                call, items[index].prompt, answers[index].answer, baseline[index].answer, max_chars=JUDGE_MAX_CHARS
            )

        with (
            ThreadPoolExecutor(self.options.clients) as pool,
            tqdm(total=len(items), desc=label, unit="pair", file=sys.stderr, leave=False) as bar,
        ):

            def counted(index: int) -> PairVerdict:
                verdict = one(index)
                bar.update(1)
                return verdict

            return list(pool.map(counted, range(len(items))))


def _first_unique(records: Sequence[QARecord], n: int) -> list[QARecord]:
    """The first `n` records of a file, in its order, each prompt once."""
    seen: dict[str, QARecord] = {}
    for record in records:
        seen.setdefault(record.prompt, record)
    return list(seen.values())[:n]


def point_overrides(spec: str) -> dict[str, str]:
    """ "routing.load_signal=ema,retrieval.k=5" as the environment overrides the proxy reads."""
    overrides = {}
    for part in spec.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", key) or not value:
            raise ConfigError(
                f"EchoLM point {spec!r}: each part must read section.key=value, e.g. routing.cost_weight=0.2"
            )
        overrides["ECHOLM_" + "__".join(name.upper() for name in key.split("."))] = value
    return overrides


def check_overrides(raw: Mapping[str, Any], overrides: Mapping[str, str]) -> None:
    """Validate the config section under these overrides as the point's proxy will (ConfigError if bad)."""
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        settings_from_mapping(raw.get(CONFIG_SECTION))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _judge_call(chat: ProxyChat, model: str) -> Callable[[list[dict[str, str]]], str]:
    def call(messages: list[dict[str, str]]) -> str:
        return chat(model, messages, max_tokens=JUDGE_MAX_TOKENS).answer

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
