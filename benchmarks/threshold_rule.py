"""How often the dynamic utility threshold's rule (`core.example_threshold`) lowers a tenant's bar, and how
soon, replayed on the cheap tier's real answers to the train items of the threshold study.

    .venv/bin/python benchmarks/threshold_rule.py [--items requests] [--out DIR]  # DIR: threshold-study-2026-12-06

The study (`echolm answers --workload W --examples-study --examples-threshold 0.3`) asked the cheap tier each
train item with the examples a bar of 0.3 shows; for the items the default bar (0.5) shows nothing and 0.3 shows
some, the "band" [0.3, 0.5), both answers exist: shown (the study's) and hidden (the table's, the cheap tier's
own). A simulated tenant's requests in that band are drawn from those items with replacement; each joins the
trial's shown arm with probability `explore_share`, its hidden arm with the same probability, and is otherwise
routed as usual (not scored here). Every trial answer is scored by the workload's metric (as feedback or a
quality target's comparison would score it). After each score the rule is asked whether the bar moves below the
band, or whether the band, tried for `max_evidence` scores an arm, is explored no more. Over many such streams:
the share whose bar has moved after N requests in the band, and whose trial ended unmoved, for each workload.
Nothing here is
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
CHECKPOINTS = (100, 300, 1000, 3000, 10000)  # requests in the band


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


def trial(pairs: list[tuple[float, float]], settings: DynamicThresholdSettings, rng: random.Random) -> tuple[str, int]:
    """How one tenant's trial ends: ("moved", n) once the bar moved below the band after n requests in it,
    ("ended", n) once the band was tried for `max_evidence` scores an arm without passing, ("running", last)."""
    counts = {"shown": [0.0, 0.0], "hidden": [0.0, 0.0]}
    for n in range(1, CHECKPOINTS[-1] + 1):
        shown_score, hidden_score = rng.choice(pairs)
        draw = rng.random()
        if draw >= 2 * settings.explore_share:
            continue  # outside the trial: routed as usual, no score for either arm
        arm = "shown" if draw < settings.explore_share else "hidden"
        value = shown_score if arm == "shown" else hidden_score
        counts[arm][0] += value
        counts[arm][1] += 1 - value
        evidence = {(EVIDENCE_TIER, evidence_bucket(BAND, a)): (c[0], c[1]) for a, c in counts.items()}  # type: ignore[arg-type]
        found = tenant_threshold(BASE, settings, evidence)
        if found.bar < BASE:
            return "moved", n
        if found.explored is None:
            return "ended", n
    return "running", CHECKPOINTS[-1]


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
        f"{settings.explore_share:g} an arm, min_evidence {settings.min_evidence}, max_evidence "
        f"{settings.max_evidence}, confidence {settings.confidence:g}), {STREAMS} simulated streams a workload, "
        "every trial answer scored by the workload's metric.",
        "",
        f"| workload | {noun} in the band [0.3, 0.5) | shown (mean score) | hidden | "
        + " | ".join(f"bar moved within {n} requests" for n in CHECKPOINTS)
        + f" | trial ended unmoved within {CHECKPOINTS[-1]} |",
        "|---|---|---|---|" + "---|" * (len(CHECKPOINTS) + 1),
    ]
    for workload in ("banking77", "nq_open"):
        pairs = band_scores(workload, args.items)
        rng = random.Random(7)
        ends = [trial(pairs, settings, rng) for _ in range(STREAMS)]
        shares = [sum(how == "moved" and at <= n for how, at in ends) / STREAMS for n in CHECKPOINTS]
        ended = sum(how == "ended" for how, _ in ends) / STREAMS
        shown = sum(p[0] for p in pairs) / len(pairs)
        hidden = sum(p[1] for p in pairs) / len(pairs)
        moved = " | ".join(f"{s:.1%}" for s in shares)
        lines.append(f"| {workload} | {len(pairs)} | {shown:.3f} | {hidden:.3f} | {moved} | {ended:.1%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rule-replay{'' if args.items == 'train' else '-requests'}.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
