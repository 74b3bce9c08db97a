"""What an answers table says, without asking a model: each choice's cost as measured when it was answered,
and the quality of fixed policies, of the baselines and of the oracle ceiling, paired with strong-only, with
95% intervals and each policy's throughput ceiling on equal hardware."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from echolm_lab.bench import table_policies as policies
from echolm_lab.bench.answers_table import CHEAP_WITH_EXAMPLES, CHOICES, Answer
from echolm_lab.bench.table_build import TableWorkload
from echolm_lab.bench.table_policies import evaluate_policies
from echolm_lab.bench.table_verdicts import Verdict
from echolm_lab.stats import percentile


def choice_costs(answers: Sequence[Answer]) -> list[str]:
    """Markdown rows: per choice, answers held, latency p50/p95, prompt and completion tokens (means)."""
    rows = [
        "| choice | answers | latency p50 / p95 s | prompt tokens | completion tokens | examples shown |",
        "|---|---|---|---|---|---|",
    ]
    groups: list[tuple[str, list[Answer]]] = [(c, [a for a in answers if a.choice == c]) for c in CHOICES]
    # The cheap tier's cost with examples by how many it was shown: prefill is not free on a CPU.
    shown = sorted({len(a.examples) for a in answers if a.choice == CHEAP_WITH_EXAMPLES})
    if len(shown) > 1:
        groups += [
            (
                f"{CHEAP_WITH_EXAMPLES}, {n} shown",
                [a for a in answers if a.choice == CHEAP_WITH_EXAMPLES and len(a.examples) == n],
            )
            for n in shown
        ]
    for choice, mine in groups:
        if not mine:
            continue
        latencies = [a.latency_s for a in mine]
        p95 = percentile(latencies, 95) or 0.0
        rows.append(
            f"| {choice} | {len(mine)} | {statistics.median(latencies):.2f} / {p95:.2f} "
            f"| {statistics.mean(a.prompt_tokens for a in mine):.0f} "
            f"| {statistics.mean(a.completion_tokens for a in mine):.1f} "
            f"| {statistics.mean(len(a.examples) for a in mine):.2f} |"
        )
    return rows


def policy_rows(
    source: TableWorkload,
    answers: Sequence[Answer],
    embed: policies.Embed | None = None,
    reuse_s: float = 0.0,
    verdicts: Sequence[Verdict] = (),
) -> list[str]:
    """Markdown rows: quality of each policy paired with strong-only, and its throughput ceilings. Without
    `embed` only the policies that need no retrieval (fixed choices, the oracle over the table's three)."""
    if source.workload.score is None and not verdicts:
        return [f"{source.workload.name} is judged pairwise: its policies' quality needs verdicts (`--verdicts`)."]
    results = evaluate_policies(source, answers, embed, reuse_s, verdicts=verdicts)
    if not results:
        return ["No request has all three choices answered (and judged) yet."]
    rows = [
        f"Paired over the {results[0].score.requests} requests with every choice answered "
        f"({source.workload.metric}); ceilings are the highest arrival rate each policy's choices allow, as a "
        "ratio to strong-only on the same cores (two strong servers), from each chosen answer's measured latency"
        + (f" (a reused answer: {reuse_s * 1000:.0f} ms of lookup)" if embed is not None else "")
        + ":",
        "",
        "| policy | quality | difference to strong-only (95% interval) | share per choice "
        "| ceiling, 1 cheap + 1 strong | ceiling, 2 shared slots |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        score, bound = result.score, result.ceiling
        shares = ", ".join(f"{choice} {share:.0%}" for choice, share in sorted(score.shares.items()))
        low, high = score.interval
        rows.append(
            f"| {score.policy} | {score.quality:.3f} | {score.difference:+.3f} ({low:+.3f} to {high:+.3f}) "
            f"| {shares} | {_ratio(bound.fixed_split)} | {_ratio(bound.elastic)} |"
        )
    return rows


def _ratio(value: float) -> str:
    return "unbounded" if value == float("inf") else f"{value:.2f}x"


def table_report(
    source: TableWorkload,
    answers: Sequence[Answer],
    embed: policies.Embed | None = None,
    reuse_s: float = 0.0,
    verdicts: Sequence[Verdict] = (),
) -> str:
    lines = [
        f"# Answers table: {source.workload.name}",
        "",
        f"Warm pool {len(source.pool)}"
        + (f" (answers by {source.teacher})" if source.teacher else " (answers by the strong tier)")
        + f", requests {len(source.requests)}; {len(answers)} answers held.",
        "",
        "## What each choice cost when it was answered (both servers busy, one thread each)",
        "",
        *choice_costs(answers),
        "",
        "## Policies: quality and throughput ceilings",
        "",
        *policy_rows(source, answers, embed, reuse_s, verdicts),
        "",
    ]
    return "\n".join(lines)
