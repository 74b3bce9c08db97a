"""Reuse as an arm of the router: where it would stand in for the cheap tier, and what that did to quality.

    .venv/bin/python benchmarks/reuse_stand_in.py [--out benchmarks/results/reuse-stand-in-2026-12-06]

With `routing.reuse.stand_in`, a request the router sends to a cheaper tier is served the nearest cached
answer instead where P(that answer is as good as the strongest's) times the strongest tier's quality is at
least the chosen tier's quality. Under config.yaml's priors (cheap 0.3, strong 0.8, example uplift 0.9) the
cheap tier without examples scores 0.3, so the cached answer stands in from P >= 0.375; with an example
shown the cheap tier scores at least 0.678 (the lowest bucket), which needs P >= 0.85, above the reuse bar
itself (0.5): the cached answer never stands in for the cheap tier with examples.

Read off the answers tables (benchmarks/tables) on each workload's train items, never the requests a
benchmark measures (printed after them for reference only): the strong tier's, the cheap tier's and the
cheap tier with examples' answers, scored by the workload's metric, against the nearest warm-pool answer
and its P under the shipped reuse model. Sums are of the metric (right answers, for exact match).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from echolm_lab.bench.answers_table import (
    CHEAP,
    CHEAP_WITH_EXAMPLES,
    STRONG,
    Answer,
    AnswersTable,
)
from echolm_lab.bench.table_build import TableWorkload, committed_workload
from echolm_lab.bench.table_policies import Embed, pool_answers, remembering
from echolm_lab.bench.table_reuse import nearest_candidates, shipped_reuse_probabilities
from echolm_lab.bench.table_scores import scores_by_choice
from echolm_lab.datasets import QARecord, default_data_dir
from echolm_middleware.config import load_settings
from echolm_middleware.core.reuse import REUSE_MIN_PROBABILITY
from echolm_middleware.core.routing import TierProfile, prior_mean
from echolm_middleware.factory import EMBEDDERS

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("nq_open", "banking77")
WIDER_BAR = 0.2  # a lower bar than the rule's, to show which side of it the evidence falls


@dataclass(frozen=True)
class Row:
    probability: float
    examples_shown: bool
    strong: float
    cheap: float
    cheap_with_examples: float
    reuse: float


def _rows(source: TableWorkload, answers: Sequence[Answer], items: Sequence[QARecord], embed: Embed) -> list[Row]:
    score = source.workload.score
    if score is None:
        raise SystemExit(f"{source.workload.name} has no reference metric")
    by_prompt = {item.prompt: item for item in items}
    scored = scores_by_choice(answers, source.workload, items)
    shown = {a.item: bool(a.examples) for a in answers if a.choice == CHEAP_WITH_EXAMPLES and a.item in by_prompt}
    complete = [prompt for prompt, choices in scored.items() if len(choices) == 3]
    found = nearest_candidates(embed, pool_answers(source, answers), complete)
    probability = shipped_reuse_probabilities(found)
    return [
        Row(
            probability=probability[prompt],
            examples_shown=shown[prompt],
            strong=scored[prompt][STRONG],
            cheap=scored[prompt][CHEAP],
            cheap_with_examples=scored[prompt][CHEAP_WITH_EXAMPLES],
            reuse=score(found[prompt][0].example.answer, by_prompt[prompt]),
        )
        for prompt in complete
    ]


def _line(label: str, rows: Sequence[Row], against: str) -> str:
    mine = sum(row.reuse for row in rows)
    theirs = sum(getattr(row, against) for row in rows)
    strong = sum(row.strong for row in rows)
    return f"| {label} | {len(rows)} | {mine:g} | {theirs:g} ({against.replace('_', ' ')}) | {strong:g} |"


def report(name: str, split: str, rows: Sequence[Row], bar_none: float) -> list[str]:
    below_gate = [row for row in rows if row.probability < REUSE_MIN_PROBABILITY]
    plain = [row for row in below_gate if not row.examples_shown]
    with_examples = [row for row in below_gate if row.examples_shown]
    stands_in = [row for row in plain if row.probability >= bar_none]
    wider = [row for row in plain if row.probability >= WIDER_BAR]
    cheap_answers = [row for row in plain if row.probability < bar_none]
    examples_answer = [row for row in with_examples if row.probability >= WIDER_BAR]
    return [
        f"### {name}, {split} ({len(rows)} items)",
        "",
        "| items (P below the reuse bar 0.5) | n | reuse | the cheap tier | strong |",
        "|---|---|---|---|---|",
        _line(f"no example shown, P >= {bar_none:.3f}: the rule stands in", stands_in, "cheap"),
        _line(f"no example shown, P >= {WIDER_BAR:g}", wider, "cheap"),
        _line(f"no example shown, P < {bar_none:.3f}: cheap answers", cheap_answers, "cheap"),
        _line(
            f"examples shown, P >= {WIDER_BAR:g}: cheap with examples answers", examples_answer, "cheap_with_examples"
        ),
        "",
    ]


def judged_reach(name: str, embed: Embed, bar_none: float) -> list[str]:
    """A judged workload has no metric to score reuse by: how far its requests' P reaches toward the bar."""
    source = committed_workload(name, default_data_dir())
    answers = AnswersTable(ROOT / "benchmarks" / "tables" / f"{name}.jsonl").answers()
    prompts = [item.prompt for item in source.requests]
    found = nearest_candidates(embed, pool_answers(source, answers), prompts)
    probabilities = sorted(shipped_reuse_probabilities(found).values())
    reached = sum(probability >= bar_none for probability in probabilities)
    return [
        f"### {name}, requests ({len(prompts)} items; judged, so only P is read)",
        "",
        f"P under the shipped reuse model: median {probabilities[len(probabilities) // 2]:.4f}, highest "
        f"{probabilities[-1]:.4f}; {reached} at or above {bar_none:.3f}, the lowest P at which the rule stands "
        "in.",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reuse-stand-in-2026-12-06")
    args = parser.parse_args()
    settings, _ = load_settings(ROOT / "config.yaml")
    tiers = {tier.name: tier for tier in settings.tiers}
    cheap, strong = tiers["cheap"], tiers["strong"]
    profile = TierProfile("cheap", 0, 0.0, 1.0, cheap.quality_prior, cheap.max_input_tokens)
    bar_none = (
        prior_mean(profile, "none", strongest=False, uplift=settings.routing.example_uplift) / strong.quality_prior
    )
    bar_low = prior_mean(profile, "low", strongest=False, uplift=settings.routing.example_uplift) / strong.quality_prior
    embed = remembering(EMBEDDERS[settings.embedder.backend](settings).embed)
    lines = [
        "# Reuse standing in for the cheap tier (`routing.reuse.stand_in`)",
        "",
        "`.venv/bin/python benchmarks/reuse_stand_in.py`",
        "",
        f"Under config.yaml's priors the cached answer stands in for the cheap tier without examples from P >= "
        f"{bar_none:.3f}, and for the cheap tier with examples (lowest bucket) only from P >= {bar_low:.3f}, above "
        f"the reuse bar {REUSE_MIN_PROBABILITY:g}: never. Sums of the metric over the items (right answers).",
        "",
    ]
    for name in WORKLOADS:
        source = committed_workload(name, default_data_dir())
        answers = AnswersTable(ROOT / "benchmarks" / "tables" / f"{name}.jsonl").answers()
        for split, items in (("train items", source.train), ("requests, for reference only", source.requests)):
            lines += report(name, split, _rows(source, answers, items, embed), bar_none)
    lines += judged_reach("arena_hard", embed, bar_none)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
