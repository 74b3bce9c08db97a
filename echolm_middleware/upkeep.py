"""One upkeep pass over the cache: cost-aware replay, coverage of misses, then eviction.

The pass is planned first (every strong-tier call it will make, each priced at an upper bound) and the
plan is journalled (an UpkeepJournal, in the state database); each step is marked done after its single
store write. A pass killed at any point leaves every example with its old or its new answer, and the
next pass finishes the journalled steps before planning anew. Budgets hold by construction: a step runs only if
what was spent plus the step's upper bound still fits.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from echolm_middleware.config import UpkeepSettings
from echolm_middleware.core.answer_pick import PICK_MAX_TOKENS, distinct_answers, parse_pick, pick_prompt
from echolm_middleware.core.consistency import most_agreed
from echolm_middleware.core.engine import Engine
from echolm_middleware.core.ports import Completer, DecisionHistory, Leases, UpkeepJournal
from echolm_middleware.core.requests import context_key
from echolm_middleware.core.types import Completion, Decision, Example
from echolm_middleware.core.upkeep_rules import Miss, cluster_misses, plan_eviction, plan_replay

LEASE = "echolm-upkeep"
# The chat template and role markers a server adds around a prompt, beyond its own tokens.
_TEMPLATE_TOKENS = 32
# A pass holding the running lease longer than this is presumed dead (its process was killed).
_RUNNING_TTL_S = 3600.0


@dataclass
class StepReport:
    kind: str  # "replay" or "coverage"
    tenant: str
    prompt: str
    outcome: str = "pending"  # "upgraded", "admitted" or "skipped: why"
    gain_before: float = 0.0
    gain_after: float = 0.0
    tokens: int = 0
    cost_usd: float = 0.0
    cluster_size: int = 0


@dataclass
class PassReport:
    run_id: str
    resumed: bool
    budget_tokens: int
    budget_usd: float | None
    steps: list[StepReport] = field(default_factory=list)
    evicted: dict[str, int] = field(default_factory=dict)
    expired: dict[str, int] = field(default_factory=dict)
    period: int | None = None  # the schedule's period this pass was run for (None: run by hand)

    @property
    def tokens_spent(self) -> int:
        return sum(step.tokens for step in self.steps)

    @property
    def usd_spent(self) -> float:
        return sum(step.cost_usd for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens_spent"], data["usd_spent"] = self.tokens_spent, round(self.usd_spent, 6)
        return data


class Progress(Protocol):
    """Told how many steps a pass will run, then of each step as it finishes (a progress bar)."""

    def start(self, total: int) -> None: ...

    def advance(self, step: StepReport) -> None: ...


class Upkeep:
    """Runs passes over one engine's store with the strongest tier, within the configured budgets.

    `history` holds the engine's decisions (coverage reads its misses there); `journal` keeps a pass's
    plan; `leases` allow one pass per period between workers (the state database's on one host, Redis
    across hosts).
    """

    def __init__(
        self,
        engine: Engine,
        completer: Completer,
        settings: UpkeepSettings,
        *,
        history: DecisionHistory,
        journal: UpkeepJournal,
        leases: Leases,
        price_per_token_usd: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.history = history
        self.journal = journal
        self.leases = leases
        self.completer = completer
        self.settings = settings
        self.price_per_token_usd = price_per_token_usd
        self.now = clock
        self.strongest = engine.strongest

    # ---- planning -------------------------------------------------------------------------------

    def _call_tokens(self, prompt: str, answer_tokens: int, instructions: str = "") -> int:
        """One strong-tier call: the request (with a margin for tokenizers that differ), its template, an answer."""
        asked = f"{instructions}\n{prompt}" if instructions else prompt
        return int(self.engine.tokens_for(self.strongest).count(asked) * 1.1) + _TEMPLATE_TOKENS + answer_tokens

    def _step_tokens(self, prompt: str, answer_tokens: int, instructions: str = "") -> int:
        """A step's calls: every sample, and with `keep: judge` the judge's, whose prompt lists the samples."""
        samples = self.settings.samples
        tokens = samples * self._call_tokens(prompt, answer_tokens, instructions)
        if self._judges:
            tokens += self._call_tokens(prompt, PICK_MAX_TOKENS, instructions) + samples * answer_tokens
        return tokens

    @property
    def _judges(self) -> bool:
        return self.settings.keep == "judge" and self.settings.samples > 1

    def _reserve(self, prompt: str, instructions: str = "") -> int:
        """The most a step can spend: every sample (and the judge) at the longest answer allowed."""
        return self._step_tokens(prompt, self.settings.max_answer_tokens, instructions)

    def _plan(self, tenants: Sequence[str], recent: Sequence[Decision]) -> list[dict[str, Any]]:
        budget = float(self.settings.budget_tokens)
        now = self.now()
        owner: dict[str, str] = {}
        pooled: list[Example] = []
        for tenant in tenants:
            for example in self.engine.store.examples(tenant):
                owner[example.id] = tenant
                pooled.append(example)

        def answer_tokens(example: Example) -> int:
            return min(self.settings.max_answer_tokens, self.engine.tokens_for(self.strongest).count(example.answer))

        replay = plan_replay(
            pooled,
            expected_cost=lambda e: float(self._step_tokens(e.prompt, answer_tokens(e), e.instructions)),
            reserve=lambda e: float(self._reserve(e.prompt, e.instructions)),
            saving_per_use=lambda e: float(self._call_tokens(e.prompt, answer_tokens(e), e.instructions)),
            budget=budget,
            now=now,
            horizon_days=self.settings.horizon_days,
            max_replays=self.settings.max_replays,
        )
        steps: list[dict[str, Any]] = [
            {
                "kind": "replay",
                "tenant": owner[c.example.id],
                "prompt": c.example.prompt,
                "instructions": c.example.instructions,
                "example_id": c.example.id,
                "replays_after": c.example.replays + 1,
                "gain_before": c.example.gain,
                "estimate": int(c.reserved),
            }
            for c in replay
        ]
        left = budget - sum(int(step["estimate"]) for step in steps)
        for tenant in tenants:
            for cluster in self._miss_clusters(tenant, [d for d in recent if d.tenant == tenant]):
                estimate = self._reserve(cluster[0].query, cluster[0].instructions)
                if estimate > left:
                    continue
                steps.append(
                    {
                        "kind": "coverage",
                        "tenant": tenant,
                        "prompt": cluster[0].query,
                        "instructions": cluster[0].instructions,
                        "cluster_size": len(cluster),
                        "gain_before": 0.0,
                        "estimate": estimate,
                    }
                )
                left -= estimate
        return steps

    def _miss_clusters(self, tenant: str, recent: Sequence[Decision]) -> list[list[Miss]]:
        """Clusters of the tenant's recent requests that found no useful example and no cached answer covers yet."""
        # Per system message, the queries that missed under it. A request with earlier turns or with
        # parameters that shape its answer cannot be asked again as it was: coverage leaves it out.
        by_instructions: dict[str, dict[str, None]] = {}
        for decision in recent:
            if decision.action != "route" or not decision.query:
                continue
            if decision.examples or decision.passed_over:
                continue  # it found examples: not a miss
            if decision.history_turns or decision.not_cached:
                continue
            if self.history.recorded_by(decision.request_id) == self.strongest:
                continue  # the strongest tier answered it, and that answer was offered for admission
            by_instructions.setdefault(decision.instructions, {})[decision.query] = None
        covered = []
        for instructions, queries in by_instructions.items():
            context = context_key(instructions, (), {})
            vectors = self.engine.embedder.embed(list(queries))
            misses = [Miss(query, vector, instructions) for query, vector in zip(queries, vectors, strict=True)]
            for cluster in cluster_misses(misses, min_similarity=self.settings.coverage_similarity):
                if len(cluster) < self.settings.coverage_min_cluster:
                    continue
                nearest = self.engine.store.nearest(tenant, cluster[0].vector, 1, context=context)
                if nearest and nearest[0].similarity >= self.settings.coverage_similarity:
                    continue  # an example close enough exists by now
                covered.append(cluster)
        covered.sort(key=len, reverse=True)
        return covered

    # ---- running ----------------------------------------------------------------------------------

    def plan(self, tenants: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The steps a new pass would take now, without running or journalling them (`--dry-run`)."""
        recent = self._recent()
        return self._plan(self._tenants(tenants, recent), recent)

    def run_pass(self, tenants: Sequence[str] | None = None, progress: Progress | None = None) -> PassReport:
        """Finish an interrupted pass if the journal holds one; else plan and run a new one, then evict."""
        recent = self._recent()
        chosen = self._tenants(tenants, recent)
        unfinished = self.journal.unfinished_pass()
        if unfinished is not None:
            run_id, pending = unfinished
            resumed = True
        else:
            run_id, resumed = uuid.uuid4().hex, False
            planned = self._plan(chosen, recent)
            self.journal.begin_pass(run_id, [json.dumps(step) for step in planned])
            pending = list(enumerate(json.dumps(step) for step in planned))
        report = PassReport(run_id, resumed, self.settings.budget_tokens, self.settings.budget_usd)
        if progress is not None:
            progress.start(len(pending))
        for seq, raw in pending:
            report.steps.append(self._run_step(json.loads(raw), report))
            self.journal.finish_step(run_id, seq)
            if progress is not None:
                progress.advance(report.steps[-1])
        self._evict(chosen, report)
        return report

    def _recent(self) -> list[Decision]:
        """The decisions coverage looks at for misses, read once per pass."""
        return self.history.recent(self.now() - self.settings.coverage_window_hours * 3600.0)

    def _tenants(self, asked: Sequence[str] | None, recent: Sequence[Decision]) -> list[str]:
        """The tenants asked for; by default those with examples and those with recent requests."""
        if asked is not None:
            return list(asked)
        return sorted(set(self.engine.store.tenants()) | {d.tenant for d in recent})

    def _fits(self, report: PassReport, estimate: int) -> bool:
        if report.tokens_spent + estimate > self.settings.budget_tokens:
            return False
        budget_usd = self.settings.budget_usd
        return budget_usd is None or report.usd_spent + estimate * self.price_per_token_usd <= budget_usd

    def _run_step(self, step: dict[str, Any], report: PassReport) -> StepReport:
        result = StepReport(
            kind=step["kind"],
            tenant=step["tenant"],
            prompt=step["prompt"],
            gain_before=float(step.get("gain_before", 0.0)),
            cluster_size=int(step.get("cluster_size", 0)),
        )
        if not self._fits(report, int(step["estimate"])):
            result.outcome = "skipped: budget"
            return result
        instructions = str(step.get("instructions", ""))  # journals written before it was kept have none
        answer = self._best_answer(step["prompt"], instructions, result)
        if answer is None:
            result.outcome = "skipped: no clean answer"
            return result
        if step["kind"] == "replay":
            # Through the same screens as a live request's answer (scrubbed, refused when it reads like
            # instructions); a coverage answer goes through `admit`, which applies them.
            kept = self.engine.answer_to_keep(answer)
            if kept is None:
                result.outcome = "skipped: refused by admission"
                return result
            answer = kept
            quality = self.engine.settings.admission.initial_quality
            replays_after = int(step["replays_after"])
            changed = self.engine.store.modify(
                step["tenant"],
                [step["example_id"]],
                lambda e: replace(
                    e,
                    answer=answer,
                    source_tier=self.strongest,
                    quality=quality,
                    gain=0.0,  # its shortfall was the old answer's; the new one starts clean
                    replays=max(e.replays, replays_after),  # idempotent when a resumed pass repeats it
                ),
            )
            result.outcome = "upgraded" if changed else "skipped: example gone"
        else:
            admitted = self.engine.admit(
                step["tenant"], step["prompt"], answer, self.strongest, instructions, admitted_by="upkeep: coverage"
            )
            result.outcome = "admitted" if admitted else "skipped: below the admission bar"
        result.gain_after = 0.0 if result.outcome in ("upgraded", "admitted") else result.gain_before
        return result

    def _ask(
        self, prompt: str, instructions: str, result: StepReport, *, max_tokens: int, temperature: float
    ) -> Completion:
        """One strongest-tier call, its tokens and cost counted to the step."""
        completion = self.completer.complete(
            self.strongest, prompt, max_tokens=max_tokens, temperature=temperature, instructions=instructions
        )
        result.tokens += completion.tokens
        result.cost_usd += (
            completion.cost_usd if completion.cost_usd is not None else completion.tokens * self.price_per_token_usd
        )
        return completion

    def _best_answer(self, prompt: str, instructions: str, result: StepReport) -> str | None:
        """Ask the strongest tier `samples` times (the first greedy, the rest at 0.7); of the clean answers keep
        the one the others agree with most (`core.consistency`), or with `keep: judge`, where they differ, the
        one the strongest tier names among them (`core.answer_pick`)."""
        answers = []
        for index in range(self.settings.samples):
            completion = self._ask(
                prompt, instructions, result, max_tokens=self.settings.max_answer_tokens,
                temperature=0.0 if index == 0 else 0.7,
            )  # fmt: skip
            if completion.finish_reason in (None, "stop") and completion.text.strip():
                answers.append(completion.text.strip())
        if len(answers) <= 1:
            return answers[0] if answers else None
        if not self._judges:
            return answers[most_agreed(self.engine.embedder.embed(answers))]
        candidates = distinct_answers(answers)
        if len(candidates) == 1:
            return candidates[0]
        reply = self._ask(
            pick_prompt(prompt, candidates), instructions, result, max_tokens=PICK_MAX_TOKENS, temperature=0.0
        )
        picked = parse_pick(reply.text, candidates)
        return candidates[0 if picked is None else picked]  # unreadable: the answer given most often

    def evict(self) -> PassReport:
        """Eviction alone (ttl_days and the budgets) over every tenant that has examples: no model calls."""
        report = PassReport(uuid.uuid4().hex, False, 0, None)
        self._evict(self.engine.store.tenants(), report)
        return report

    def _evict(self, tenants: Sequence[str], report: PassReport) -> None:
        for tenant in tenants:
            plan = plan_eviction(
                self.engine.store.examples(tenant),
                now=self.now(),
                ttl_days=self.settings.ttl_days,
                max_entries=self.settings.max_entries,
                max_bytes=self.settings.max_bytes,
            )
            if plan.ids:
                self.engine.store.delete(tenant, plan.ids)
            report.evicted[tenant] = len(plan.over_budget)
            report.expired[tenant] = len(plan.expired)


def process_holder() -> str:
    """This process as a lease holder: host and pid, so a dead holder on this host can be recognised."""
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_alive(holder: str) -> bool:
    """False only for a holder on this host whose process no longer exists; other hosts count as alive."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Busy(Exception):
    """Another process is running a pass on this state database right now."""


def run_now(
    upkeep: Upkeep, holder: str, *, tenants: Sequence[str] | None = None, progress: Progress | None = None
) -> PassReport:
    """Run one pass now (the CLI's `echolm upkeep`), unless another one is running (raises Busy)."""
    running = f"{LEASE}:running"
    now = upkeep.now()
    if not upkeep.leases.try_lease(running, holder, ttl_s=_RUNNING_TTL_S, now=now):
        current = upkeep.leases.lease_holder(running, now)
        if current is None or holder_alive(current):
            raise Busy(f"another upkeep pass is running on this state database ({current})")
        # Its process on this host is gone (killed mid-pass): take over; the journal says what is left.
        upkeep.leases.release_lease(running, current)
        if not upkeep.leases.try_lease(running, holder, ttl_s=_RUNNING_TTL_S, now=now):
            raise Busy("another upkeep pass took over first")
    try:
        return upkeep.run_pass(tenants, progress)
    finally:
        upkeep.leases.release_lease(running, holder)


def run_exclusive(
    upkeep: Upkeep, holder: str, *, period_s: float, tenants: Sequence[str] | None = None
) -> PassReport | None:
    """The scheduled job: run this period's pass unless another process ran or runs it (None then).

    The period's lease is never released early, so workers whose schedulers fire moments apart still
    run one pass per period between them.
    """
    now = upkeep.now()
    period = int(now // period_s)
    if not upkeep.leases.try_lease(f"{LEASE}:{period}", holder, ttl_s=period_s, now=now):
        return None
    try:
        report = run_now(upkeep, holder, tenants=tenants)
    except Busy:
        return None
    report.period = period
    return report
