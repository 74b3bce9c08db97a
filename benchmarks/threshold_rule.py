"""How often the dynamic utility threshold's rule (`core.example_threshold`) lowers a tenant's bar, and how
soon, replayed on the cheap tier's real answers to the train items of the threshold study.

    .venv/bin/python benchmarks/threshold_rule.py [--items requests] [--out DIR]  # DIR: threshold-study-2026-12-06

The study (`echolm answers --workload W --examples-study --examples-threshold 0.3`) asked the cheap tier each
train item with the examples a bar of 0.3 shows; for the items the default bar (0.5) shows nothing and 0.3 shows
some, the "band" [0.3, 0.5), both answers exist: shown (the study's) and hidden (the table's, the cheap tier's
own). A simulated tenant's requests in that band are drawn from those items with replacement; each is shown its
examples with probability `explore_share`, and every answer is scored by the workload's metric (as feedback or a
comparison would score it). After each score the rule is asked whether the bar moves below the band. Over many
such streams: the share whose bar has moved after N requests in the band, for each workload. Nothing here is
asked of a model. By default train items only (the requests the benchmark measures are never read); with
`--items requests`, the same replay on the requests' answers (`--examples-items requests` in the study): the
held-out check of the defaults chosen on the train items, written to rule-replay-requests.md.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from echolm_lab.bench.answers_table import CHEAP_WITH_EXAMPLES, AnswersTable
from echolm_lab.bench.examples_study import examples_path
from echolm_lab.bench.table_build import committed_workload
from echolm_lab.datasets import default_data_dir
from echolm_middleware.config import DynamicThresholdSettings
from echolm_middleware.core.example_threshold import EVIDENCE_TIER, evidence_bucket, tenant_threshold

ROOT = Path(__file__).resolve().parents[1]
VARIANT = f"{CHEAP_WITH_EXAMPLES} threshold 0.3"
BASE, BAND = 0.5, 0.3
STREAMS = 1000
CHECKPOINTS = (100, 300, 1000, 3000)  # requests in the band


def band_scores(workload: str, split: str = "train") -> list[tuple[float, float]]:
    """(shown, hidden) scores of each train item (or request) in the band [0.3, 0.5)."""
    source = committed_workload(workload, default_data_dir())
    score = source.workload.score
    assert score is not None
    table = AnswersTable(ROOT / "benchmarks" / "tables" / f"{workload}.jsonl")
    default = {a.item: a for a in table.answers() if a.choice == CHEAP_WITH_EXAMPLES}
    shown = {a.item: a for a in AnswersTable(examples_path(table.path)).answers() if a.choice == VARIANT}
    pairs = []
    for item in source.train if split == "train" else source.requests:
        hidden, lower = default.get(item.prompt), shown.get(item.prompt)
        if hidden is not None and lower is not None and not hidden.examples and lower.examples:
            pairs.append((score(lower.answer, item), score(hidden.answer, item)))
    return pairs


def first_move(pairs: list[tuple[float, float]], settings: DynamicThresholdSettings, rng: random.Random) -> int | None:
    """The number of requests in the band after which the bar moved below it (None: not within the last
    checkpoint)."""
    counts = {"shown": [0.0, 0.0], "hidden": [0.0, 0.0]}
    for n in range(1, CHECKPOINTS[-1] + 1):
        shown_score, hidden_score = rng.choice(pairs)
        arm = "shown" if rng.random() < settings.explore_share else "hidden"
        value = shown_score if arm == "shown" else hidden_score
        counts[arm][0] += value
        counts[arm][1] += 1 - value
        evidence = {(EVIDENCE_TIER, evidence_bucket(BAND, a)): (c[0], c[1]) for a, c in counts.items()}  # type: ignore[arg-type]
        if tenant_threshold(BASE, settings, evidence).bar < BASE:
            return n
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", choices=("train", "requests"), default="train", help="whose answers to replay")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "threshold-study-2026-12-06")
    args = parser.parse_args()
    settings = DynamicThresholdSettings()
    noun, option = ("train items", "") if args.items == "train" else ("requests", " --items requests")
    lines = [
        f"# The dynamic threshold's rule replayed on the {noun}' answers",
        "",
        f"`.venv/bin/python benchmarks/threshold_rule.py{option}`: the shipped defaults (explore_share "
        f"{settings.explore_share:g}, min_evidence {settings.min_evidence}, confidence {settings.confidence:g}), "
        f"{STREAMS} simulated streams a workload, every answer in the band scored by the workload's metric.",
        "",
        f"| workload | {noun} in the band [0.3, 0.5) | shown (mean score) | hidden | "
        + " | ".join(f"bar moved within {n} requests" for n in CHECKPOINTS)
        + " |",
        "|---|---|---|---|" + "---|" * len(CHECKPOINTS),
    ]
    for workload in ("banking77", "nq_open"):
        pairs = band_scores(workload, args.items)
        rng = random.Random(7)
        moves = [first_move(pairs, settings, rng) for _ in range(STREAMS)]
        shares = [sum(m is not None and m <= n for m in moves) / STREAMS for n in CHECKPOINTS]
        shown = sum(p[0] for p in pairs) / len(pairs)
        hidden = sum(p[1] for p in pairs) / len(pairs)
        moved = " | ".join(f"{s:.1%}" for s in shares)
        lines.append(f"| {workload} | {len(pairs)} | {shown:.3f} | {hidden:.3f} | {moved} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rule-replay{'' if args.items == 'train' else '-requests'}.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
