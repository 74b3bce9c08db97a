"""What an answers table says, without asking a model: each choice's cost as measured when it was answered,
and the quality of fixed policies and of the oracle ceiling, paired with strong-only, with 95% intervals."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from echolm_lab.bench.answers_table import CHEAP, CHEAP_WITH_EXAMPLES, CHOICES, STRONG, Answer
from echolm_lab.bench.table_build import TableWorkload
from echolm_lab.bench.table_scores import fixed, oracle, score_policy, scores_by_choice


def choice_costs(answers: Sequence[Answer]) -> list[str]:
    """Markdown rows: per choice, answers held, latency p50/p95, prompt and completion tokens (means)."""
    rows = [
        "| choice | answers | latency p50 / p95 s | prompt tokens | completion tokens | examples shown |",
        "|---|---|---|---|---|---|",
    ]
    for choice in CHOICES:
        mine = [a for a in answers if a.choice == choice]
        if not mine:
            continue
        latencies = sorted(a.latency_s for a in mine)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        rows.append(
            f"| {choice} | {len(mine)} | {statistics.median(latencies):.2f} / {p95:.2f} "
            f"| {statistics.mean(a.prompt_tokens for a in mine):.0f} "
            f"| {statistics.mean(a.completion_tokens for a in mine):.1f} "
            f"| {statistics.mean(len(a.examples) for a in mine):.2f} |"
        )
    return rows


def policy_rows(source: TableWorkload, answers: Sequence[Answer]) -> list[str]:
    """Markdown rows: quality of each fixed policy and of the oracle, paired with strong-only."""
    workload = source.workload
    if workload.score is None:
        return [f"{workload.name} is judged pairwise: its policies' quality needs the judge, not the table alone."]
    scored = scores_by_choice(answers, workload, source.requests)
    complete = {prompt: row for prompt, row in scored.items() if len(row) == 3}
    if not complete:
        return ["No request has all three choices answered yet."]
    rows = [
        f"Paired over the {len(complete)} requests with every choice answered ({workload.metric}):",
        "",
        "| policy | quality | difference to strong-only (95% interval) | share per choice |",
        "|---|---|---|---|",
    ]
    policies = [
        ("strong-only", fixed(STRONG)),
        ("cheap-only", fixed(CHEAP)),
        ("cheap with examples for all", fixed(CHEAP_WITH_EXAMPLES)),
        ("oracle (a ceiling: reads the answers)", oracle(complete)),
    ]
    for name, policy in policies:
        score = score_policy(name, policy, complete)
        shares = ", ".join(f"{choice} {share:.0%}" for choice, share in sorted(score.shares.items()))
        low, high = score.interval
        rows.append(
            f"| {name} | {score.quality:.3f} | {score.difference:+.3f} ({low:+.3f} to {high:+.3f}) | {shares} |"
        )
    return rows


def table_report(source: TableWorkload, answers: Sequence[Answer]) -> str:
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
        "## Quality of fixed policies",
        "",
        *policy_rows(source, answers),
        "",
    ]
    return "\n".join(lines)
