"""NQ-open: can a request-time signal tell which requests need the strong tier? The ceiling of issue 19's
"higher exact match than the semantic cache at the same strong share".

    .venv/bin/python benchmarks/strong_need.py [--out benchmarks/results/strong-need-2026-12-06]

At a fixed share of strong calls every router differs only in which requests keep the strong tier and
what the others get (the cheap tier or the nearest cached answer). Read off the answers table
(benchmarks/tables/nq_open.jsonl), paired on the same items:

- the oracle at that share (reads the answers: the strong tier exactly where it is right and the others
  are not): the most any router could gain over the semantic cache, the headroom;
- the semantic cache lowered to that share (the least similar requests keep the strong tier), as the live
  benchmark pairs it;
- a router that ranks requests by P(the strong tier is right) - P(the nearest cached answer is right) and
  gives the strong tier the top of that list, the others the cached answer or the cheap tier, whichever is
  likelier right. P(strong right) comes from the pool, where each item's strong answer is scored against
  its reference: the similarity-weighted share of a request's k nearest pool items the strong tier got
  right (RouteLLM's ranking, on the strong tier's own record), or a logistic model over those shares at
  several k, the nearest similarity and the question's length, fitted on the pool leaving each item out of
  its own neighbours. P(reuse right) is the shipped reuse model's P, calibrated on the train items.

Everything is fitted on the pool and the 800 train items; the 1,000 requests the benchmark measures are
only scored.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echolm_lab.bench.answers_table import CHEAP, STRONG, Answer, AnswersTable
from echolm_lab.bench.offload_study import calibration, fit_logistic
from echolm_lab.bench.table_build import committed_workload
from echolm_lab.bench.table_policies import Embed, pool_answers, remembering, unit_vectors
from echolm_lab.bench.table_reuse import nearest_candidates, shipped_reuse_probabilities
from echolm_lab.bench.table_scores import paired_bootstrap, scores_by_choice
from echolm_lab.bench.workloads import Workload
from echolm_lab.datasets import QARecord, default_data_dir
from echolm_middleware.config import load_settings
from echolm_middleware.factory import EMBEDDERS

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = "nq_open"
KS = (5, 20, 80)  # neighbourhood sizes of the strong tier's record (the logistic model reads all three)
RANKING_K = 20  # the plain ranking's k
SHARES = (0.4, 0.5, 0.6)  # the live passes kept 44-58% of requests on the strong tier


@dataclass(frozen=True)
class Items:
    """One split's items, each scored (1 right, 0 wrong) for every choice, with what the router sees."""

    strong: np.ndarray
    cheap: np.ndarray
    reuse: np.ndarray
    similarity: np.ndarray  # to the nearest pool prompt
    reuse_probability: np.ndarray  # the shipped reuse model's P
    vectors: np.ndarray  # unit MiniLM vectors


def _items(
    records: Sequence[QARecord], answers: Sequence[Answer], pool: dict[str, str], embed: Embed, workload: Workload
) -> Items:
    scored = scores_by_choice(answers, workload, records)
    complete = [r for r in records if {STRONG, CHEAP} <= set(scored.get(r.prompt, {}))]
    prompts = [r.prompt for r in complete]
    found = nearest_candidates(embed, pool, prompts)
    probability = shipped_reuse_probabilities(found)
    score = workload.score
    assert score is not None  # scores_by_choice refuses a workload without a metric

    return Items(
        strong=np.asarray([scored[p][STRONG] for p in prompts]),
        cheap=np.asarray([scored[p][CHEAP] for p in prompts]),
        reuse=np.asarray([score(found[r.prompt][0].example.answer, r) for r in complete]),
        similarity=np.asarray([found[p][0].similarity for p in prompts]),
        reuse_probability=np.asarray([probability[p] for p in prompts]),
        vectors=unit_vectors(embed, prompts),
    )


def strong_record(
    vectors: np.ndarray, pool_vectors: np.ndarray, pool_right: np.ndarray, *, leave_self_out: bool
) -> np.ndarray:
    """Per query and k in KS: the similarity-weighted share of its k nearest pool items the strong tier got
    right; then the nearest similarity. With `leave_self_out` the queries are the pool itself."""
    similarities = vectors @ pool_vectors.T
    if leave_self_out:
        np.fill_diagonal(similarities, -np.inf)
    columns = []
    for k in KS:
        nearest = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
        weights = np.clip(np.take_along_axis(similarities, nearest, axis=1), 1e-6, None)
        columns.append((weights * pool_right[nearest]).sum(axis=1) / weights.sum(axis=1))
    columns.append(similarities.max(axis=1))
    return np.column_stack(columns)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    result: np.ndarray = 1 / (1 + np.exp(-z))
    return result


def auc(scores: np.ndarray, right: np.ndarray) -> str:
    value = calibration(list(scores), list(right.astype(float))).auc
    return "n/a" if value is None else f"{value:.3f}"


def with_bias(x: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(x)), x])


@dataclass(frozen=True)
class Compared:
    label: str
    quality: float
    difference: float  # against the semantic cache at the same share, paired
    interval: tuple[float, float]


def at_share(
    share: float, items: Items, needs: dict[str, np.ndarray], reuse_right: np.ndarray, cheap_rate: float
) -> list[Compared]:
    """The semantic cache, the oracle and a router ranked by each of `needs`, all at `share` strong calls,
    paired with the cache."""
    n = len(items.strong)
    keep = round(share * n)
    everyone = np.arange(n)
    cache = np.where(np.isin(everyone, np.argsort(items.similarity, kind="stable")[:keep]), items.strong, items.reuse)
    best_other = np.maximum(items.reuse, items.cheap)
    gainers = np.flatnonzero(items.strong > best_other)[:keep]
    oracle = best_other.copy()
    oracle[gainers] = items.strong[gainers]
    policies = {"semantic cache": cache, "oracle (reads the answers)": oracle}
    # Off the strong tier, the likelier right of the cached answer and the cheap tier.
    other = np.where(reuse_right >= cheap_rate, items.reuse, items.cheap)
    for label, need in needs.items():
        top = np.argsort(-need, kind="stable")[:keep]
        policies[f"ranked by {label}"] = np.where(np.isin(everyone, top), items.strong, other)
    return [
        Compared(label, float(q.mean()), float((q - cache).mean()), paired_bootstrap(list(q - cache)))
        for label, q in policies.items()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "strong-need-2026-12-06")
    args = parser.parse_args()
    settings, _ = load_settings(ROOT / "config.yaml")
    embed = remembering(EMBEDDERS[settings.embedder.backend](settings).embed)
    source = committed_workload(WORKLOAD, default_data_dir())
    score = source.workload.score
    assert score is not None
    answers = AnswersTable(ROOT / "benchmarks" / "tables" / f"{WORKLOAD}.jsonl").answers()
    pool = pool_answers(source, answers)
    pool_records = [item for item in source.pool if item.prompt in pool]
    pool_vectors = unit_vectors(embed, [item.prompt for item in pool_records])
    pool_right = np.asarray([score(pool[item.prompt], item) for item in pool_records])
    train, requests = (
        _items(split, answers, pool, embed, source.workload) for split in (source.train, source.requests)
    )

    # Fitted on the pool (leave-self-out) and the train items only.
    pool_record = strong_record(pool_vectors, pool_vectors, pool_right, leave_self_out=True)
    need_weights = np.asarray(fit_logistic(with_bias(pool_record).tolist(), pool_right.tolist()), dtype=float)
    reuse_weights = np.asarray(
        fit_logistic(with_bias(train.reuse_probability[:, None]).tolist(), train.reuse.tolist()), dtype=float
    )
    cheap_rate = float(train.cheap.mean())

    lines = [
        "# Which NQ-open requests need the strong tier",
        "",
        "`.venv/bin/python benchmarks/strong_need.py` (reads benchmarks/tables/nq_open.jsonl; fitted on the pool and "
        "the train items, scored on both splits). Pool: "
        f"{len(pool_right)} items, the strong tier right on {pool_right.mean():.1%}.",
        "",
    ]
    for name, items in (
        ("train items (fitted here)", train),
        ("requests (the benchmark's; never fitted on)", requests),
    ):
        record = strong_record(items.vectors, pool_vectors, pool_right, leave_self_out=False)
        ranking = record[:, KS.index(RANKING_K)]
        learned = _sigmoid(with_bias(record) @ need_weights)
        reuse_right = _sigmoid(with_bias(items.reuse_probability[:, None]) @ reuse_weights)
        strong_right = items.strong > 0
        lines += [
            f"## {name}: {len(items.strong)}",
            "",
            f"Right: strong {int(items.strong.sum())}, cheap {int(items.cheap.sum())}, nearest cached answer "
            f"{int(items.reuse.sum())}; the strong tier right where neither other is: "
            f"{int((items.strong > np.maximum(items.reuse, items.cheap)).sum())}.",
            "",
            "AUC for 'the strong tier is right': "
            f"the pool's record at k={RANKING_K} {auc(ranking, strong_right)}, the logistic model "
            f"{auc(learned, strong_right)}, nearest similarity {auc(items.similarity, strong_right)}. "
            f"AUC for 'the cached answer is right': its P {auc(items.reuse_probability, items.reuse > 0)}.",
            "",
            "| strong share | policy | exact match | against the semantic cache (95% interval) |",
            "|---|---|---|---|",
        ]
        needs = {
            f"the pool's record at k={RANKING_K}, less P(reuse right)": ranking - reuse_right,
            "the logistic model, less P(reuse right)": learned - reuse_right,
            # The control: the same choice off the strong tier, the strong tier's requests drawn at random.
            "nothing (a seeded random order)": np.random.default_rng(7).random(len(items.strong)),
        }
        for share in SHARES:
            for row in at_share(share, items, needs, reuse_right, cheap_rate):
                low, high = row.interval
                lines.append(
                    f"| {share:.0%} | {row.label} | {row.quality:.3f} | {row.difference * 100:+.1f} "
                    f"({low * 100:+.1f} to {high * 100:+.1f}) |"
                )
        lines.append("")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
