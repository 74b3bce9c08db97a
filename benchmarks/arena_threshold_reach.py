"""Whether a lower utility threshold lets Arena-Hard's requests read GPT-4's pool answers, counted without
asking any model.

    .venv/bin/python benchmarks/arena_threshold_reach.py [--out benchmarks/results/threshold-study-2026-12-06]

Arena-Hard's pool holds one prompt of each topic cluster answered by GPT-4-0314, and its requests the cluster's
other prompt. At the default threshold no request is shown an example, so the cheap tier never reads GPT-4's
answers (no distillation). The dynamic threshold lowers a tenant's bar band by band, never below
`retrieval.dynamic.lowest`: this counts the requests the product's selection would show an example at the
default bar, one band below it, and the lowest bar, with the nearest pool prompt's similarity for scale.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from echolm_lab.bench.answers_table import AnswersTable
from echolm_lab.bench.examples_study import DEFAULT, Variant, plan
from echolm_lab.bench.table_build import committed_workload
from echolm_lab.bench.table_policies import pool_answers
from echolm_lab.datasets import default_data_dir
from echolm_middleware.config import load_settings
from echolm_middleware.factory import EMBEDDERS

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "threshold-study-2026-12-06")
    args = parser.parse_args()
    settings, raw = load_settings(ROOT / "config.yaml")
    source = committed_workload("arena_hard", default_data_dir())
    pool = pool_answers(source, AnswersTable(ROOT / "benchmarks" / "tables" / "arena_hard.jsonl").answers())
    embedder = EMBEDDERS[settings.embedder.backend](settings)
    dynamic = settings.retrieval.dynamic
    bars = (settings.retrieval.threshold, round(settings.retrieval.threshold - dynamic.step, 2), dynamic.lowest)
    lines = [
        "# Arena-Hard: requests a lower utility threshold would show a GPT-4 pool answer",
        "",
        "`.venv/bin/python benchmarks/arena_threshold_reach.py`: the product's selection over the committed table's "
        f"pool ({len(pool)} GPT-4 answers) for its {len(source.requests)} requests; no model asked.",
        "",
        "| bar | requests shown an example | examples a request (mean) |",
        "|---|---|---|",
    ]
    nearest: list[float] = []
    for bar in bars:
        variant = (
            Variant(DEFAULT) if bar == settings.retrieval.threshold else Variant(f"threshold {bar:g}", threshold=bar)
        )
        planned = plan(source, source.requests, pool, variant, settings, raw["model_list"], settings.tiers[-1].name,
                       embedder=embedder)  # fmt: skip
        shown = [len(p.examples) for p in planned]
        nearest = sorted(p.nearest_similarity for p in planned)
        lines.append(f"| {bar:g} | {sum(n > 0 for n in shown)} of {len(shown)} | {statistics.fmean(shown):.2f} |")
    lines += [
        "",
        f"The nearest pool prompt's cosine similarity to a request: median {nearest[len(nearest) // 2]:.3f}, 90th "
        f"percentile {nearest[int(len(nearest) * 0.9)]:.3f}, highest {nearest[-1]:.3f}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "arena-reach.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
