"""Fitting and checking the router's offload model (`core.offload_model`) on an answers table.

For every train item (or request) the features come from the engine's own retrieval over the warm pool,
and the labels from the table: did serving the nearest pool answer (reuse), or the cheap tier with its
examples, score at least what the strong tier's answer scored? The weights are fitted on the train items
only (L2-regularised logistic regression by Newton's method); the requests then say how well the fitted
probabilities are calibrated (reliability bins, Brier score) and rank (AUC), without having been seen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echolm_lab.bench.answers_table import CHEAP_WITH_EXAMPLES, REUSE, STRONG, Answer
from echolm_lab.datasets import QARecord
from echolm_middleware.core.offload_model import FEATURES, offload_features, same_answer_key
from echolm_middleware.core.types import Candidate

OFFLOAD_CHOICES = (REUSE, CHEAP_WITH_EXAMPLES)
Retrieve = Callable[[str], Sequence[Candidate]]  # the engine's candidates for a request's question


def reuse_label(reused: float, own: float, reused_answer: str, own_answer: str) -> float:
    """1 where serving the nearest cached answer is as good as the strong tier's own answer, else 0.

    Where the metric scores both 0 it cannot tell an answer written for another question from a fresh wrong
    one (on NQ-open, where the strong tier is right 7% of the time, 93% of unrelated answers would "tie"):
    such a tie counts only when the two answers say the same thing (the same label or fact).
    """
    if reused != own:
        return float(reused > own)
    return float(own > 0 or same_answer_key(reused_answer) == same_answer_key(own_answer))


@dataclass(frozen=True)
class StudyRow:
    prompt: str
    features: list[float]
    labels: dict[str, float]  # choice -> 1 if as good as the strong tier's answer, else 0


def study_rows(
    items: Sequence[QARecord],
    answers: Sequence[Answer],
    retrieve: Retrieve,
    score: Callable[[str, QARecord], float],
) -> list[StudyRow]:
    """Features and labels for each item with its strong answer tabled (a label per other choice it has)."""
    tabled: dict[str, dict[str, str]] = {}
    for answer in answers:
        if answer.choice in (STRONG, CHEAP_WITH_EXAMPLES):
            tabled.setdefault(answer.item, {})[answer.choice] = answer.answer
    rows = []
    for item in items:
        row = tabled.get(item.prompt, {})
        if STRONG not in row:
            continue
        candidates = retrieve(item.prompt)
        strong = score(row[STRONG], item)
        labels = {}
        if CHEAP_WITH_EXAMPLES in row:
            labels[CHEAP_WITH_EXAMPLES] = float(score(row[CHEAP_WITH_EXAMPLES], item) >= strong)
        if candidates:
            nearest = max(candidates, key=lambda c: c.similarity)
            reused = nearest.example.answer
            labels[REUSE] = reuse_label(score(reused, item), strong, reused, row[STRONG])
        rows.append(StudyRow(item.prompt, offload_features(candidates, item.prompt), labels))
    return rows


def fit_logistic(features: Sequence[Sequence[float]], labels: Sequence[float], *, l2: float = 1.0) -> list[float]:
    """L2-regularised logistic regression by Newton's method (the bias, FEATURES[0], is not penalised)."""
    x = np.asarray(features, dtype=float)
    y = np.asarray(labels, dtype=float)
    weights = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], l2)
    penalty[0] = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-(x @ weights)))
        gradient = x.T @ (p - y) + penalty * weights
        hessian = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty) + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return [float(w) for w in weights]


@dataclass(frozen=True)
class Calibration:
    n: int
    base_rate: float  # share of positive labels
    brier: float
    auc: float | None  # None when every label is the same
    bins: list[tuple[float, float, int]]  # (mean predicted, observed rate, count) per probability decile


def calibration(probabilities: Sequence[float], labels: Sequence[float], bins: int = 10) -> Calibration:
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels, dtype=float)
    table = []
    for low in range(bins):
        inside = (p >= low / bins) & ((p < (low + 1) / bins) | (low == bins - 1))
        if inside.any():
            table.append((float(p[inside].mean()), float(y[inside].mean()), int(inside.sum())))
    return Calibration(len(p), float(y.mean()), float(((p - y) ** 2).mean()), _auc(p, y), table)


def _auc(p: np.ndarray, y: np.ndarray) -> float | None:
    """The chance a positive is ranked above a negative (ties count half): Mann-Whitney's U over n+ n-."""
    positive, negative = p[y >= 0.5], p[y < 0.5]
    if len(positive) == 0 or len(negative) == 0:
        return None
    wins = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(wins / (len(positive) * len(negative)))


def fitted_models(rows: Sequence[StudyRow], *, l2: float = 1.0) -> dict[str, list[float]]:
    """Weights per offload choice, fitted on `rows` (train items only)."""
    fitted = {}
    for choice in OFFLOAD_CHOICES:
        mine = [row for row in rows if choice in row.labels]
        if mine:
            fitted[choice] = fit_logistic([r.features for r in mine], [r.labels[choice] for r in mine], l2=l2)
    return fitted


def held_out(rows: Sequence[StudyRow], weights: Mapping[str, Sequence[float]]) -> dict[str, Calibration]:
    """How the fitted probabilities do on rows the fit never saw (the requests)."""
    checked = {}
    for choice, w in weights.items():
        mine = [row for row in rows if choice in row.labels]
        if mine:
            x = np.asarray([r.features for r in mine], dtype=float)
            probabilities = 1 / (1 + np.exp(-(x @ np.asarray(w))))
            checked[choice] = calibration(probabilities.tolist(), [r.labels[choice] for r in mine])
    return checked


def describe(weights: Mapping[str, Sequence[float]], checked: Mapping[str, Calibration]) -> list[str]:
    """Markdown: each choice's weights and its held-out calibration."""
    lines = ["| choice | " + " | ".join(FEATURES) + " |", "|---|" + "---|" * len(FEATURES)]
    lines += [f"| {c} | " + " | ".join(f"{v:+.2f}" for v in w) + " |" for c, w in weights.items()]
    lines += ["", "| choice | n | base rate | Brier | AUC |", "|---|---|---|---|---|"]
    for choice, c in checked.items():
        auc = "-" if c.auc is None else f"{c.auc:.3f}"
        lines.append(f"| {choice} | {c.n} | {c.base_rate:.3f} | {c.brier:.3f} | {auc} |")
    for choice, c in checked.items():  # reliability: does P mean what it says?
        lines += ["", f"Reliability of {choice} (held out):", "", "| mean P | observed rate | n |", "|---|---|---|"]
        lines += [f"| {predicted:.2f} | {observed:.2f} | {n} |" for predicted, observed, n in c.bins]
    return lines


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a rate: sound at 0 and 1 and in small bins, where the normal
    approximation is not (one formula; no statistics package earns its place for it)."""
    if n == 0:
        return 0.0, 1.0
    rate = successes / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def plot_reliability(checked: Mapping[str, Calibration], title: str, path: Path) -> Path:
    """One panel per choice: the observed rate per probability decile (95% Wilson bars, n per bin) against
    the mean predicted probability, the diagonal a perfectly calibrated model would follow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(checked)), figsize=(6 * max(1, len(checked)), 5.5), squeeze=False)
    for ax, (choice, calibrated) in zip(axes[0], checked.items(), strict=False):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfectly calibrated")
        for predicted, observed, count in calibrated.bins:
            low, high = wilson_interval(observed * count, count)
            ax.errorbar(predicted, observed, yerr=[[observed - low], [high - observed]], fmt="o", color="C0", capsize=3)
            ax.annotate(f"n={count}", (predicted, observed), textcoords="offset points", xytext=(6, -10), fontsize=7)
        auc = "-" if calibrated.auc is None else f"{calibrated.auc:.3f}"
        ax.set_title(
            f"{choice}: n = {calibrated.n} held-out requests\n"
            f"base rate {calibrated.base_rate:.2f}, Brier {calibrated.brier:.3f}, AUC {auc}"
        )
        ax.set_xlabel("predicted P(as good as the strong tier), mean per decile")
        ax.set_ylabel("observed share as good (95% Wilson interval)")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
