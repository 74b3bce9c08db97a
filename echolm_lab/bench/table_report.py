"""What an answers table says, without asking a model: each choice's cost as measured when it was answered,
and the quality of fixed policies, of the baselines and of the oracle ceiling, paired with strong-only, with
95% intervals and each policy's throughput ceiling on equal hardware."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from echolm_lab.bench import table_policies as policies
from echolm_lab.bench.answers_table import CHEAP, CHEAP_WITH_EXAMPLES, CHOICES, STRONG, Answer
from echolm_lab.bench.table_build import TableWorkload
from echolm_lab.bench.table_scores import Policy, fixed, oracle, score_policy, scores_by_choice


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


SEMANTIC_THRESHOLDS = (0.95, 0.9, 0.8)
DIFFICULTY_STRONG_SHARES = (0.5, 0.25)


def policy_rows(
    source: TableWorkload, answers: Sequence[Answer], embed: policies.Embed | None = None, reuse_s: float = 0.0
) -> list[str]:
    """Markdown rows: quality of each policy paired with strong-only, and its throughput ceilings. Without
    `embed` only the policies that need no retrieval (fixed choices, the oracle over the table's three)."""
    workload = source.workload
    if workload.score is None:
        return [f"{workload.name} is judged pairwise: its policies' quality needs the judge, not the table alone."]
    scored = scores_by_choice(answers, workload, source.requests)
    complete = {prompt: row for prompt, row in scored.items() if len(row) == 3}
    if not complete:
        return ["No request has all three choices answered yet."]
    named: list[tuple[str, Policy]] = [
        ("strong-only", fixed(STRONG)),
        ("cheap-only", fixed(CHEAP)),
        ("cheap with examples for all", fixed(CHEAP_WITH_EXAMPLES)),
        ("oracle over the three (a ceiling: reads the answers)", oracle(complete)),
    ]
    if embed is not None:
        items, metric = {item.prompt: item for item in source.requests}, workload.score
        neighbours = policies.nearest_in_pool(embed, policies.pool_answers(source, answers), list(complete))
        complete = policies.with_reuse(complete, neighbours, lambda answer, prompt: metric(answer, items[prompt]))
        named.insert(3, ("reuse for all (nearest pool answer)", fixed(policies.REUSE)))
        named += [(f"semantic cache {t:g}", policies.semantic_cache(neighbours, t)) for t in SEMANTIC_THRESHOLDS]
        named += [
            (
                f"difficulty router, strong share {share:g}",
                policies.difficulty_router(embed, complete, strong_share=share),
            )
            for share in DIFFICULTY_STRONG_SHARES
        ]
        named.append(("oracle with reuse (a ceiling: reads the answers)", policies.oracle_with_reuse(complete)))
    times = policies.service_times(answers)
    rows = [
        f"Paired over the {len(complete)} requests with every choice answered ({workload.metric}); ceilings are "
        "the highest arrival rate each policy's choices allow, as a ratio to strong-only on the same cores "
        "(two strong servers), from each chosen answer's measured latency"
        + (f" (a reused answer: {reuse_s * 1000:.0f} ms of lookup)" if embed is not None else "")
        + ":",
        "",
        "| policy | quality | difference to strong-only (95% interval) | share per choice "
        "| ceiling, 1 cheap + 1 strong | ceiling, 2 shared slots |",
        "|---|---|---|---|---|---|",
    ]
    for name, policy in named:
        score = score_policy(name, policy, complete)
        shares = ", ".join(f"{choice} {share:.0%}" for choice, share in sorted(score.shares.items()))
        low, high = score.interval
        bound = policies.ceiling(policy, times, list(complete), reuse_s=reuse_s)
        rows.append(
            f"| {name} | {score.quality:.3f} | {score.difference:+.3f} ({low:+.3f} to {high:+.3f}) | {shares} "
            f"| {_ratio(bound.fixed_split)} | {_ratio(bound.elastic)} |"
        )
    return rows


def _ratio(value: float) -> str:
    return "unbounded" if value == float("inf") else f"{value:.2f}x"


def table_report(
    source: TableWorkload, answers: Sequence[Answer], embed: policies.Embed | None = None, reuse_s: float = 0.0
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
        *policy_rows(source, answers, embed, reuse_s),
        "",
    ]
    return "\n".join(lines)
