"""Quality of a routing policy read off an answers table: exact, paired with strong-only, with an interval.

A policy picks one choice per request (strong, cheap, cheap with examples). Its quality is the mean of the
workload's metric over the table's answers to those choices; its difference to strong-only is paired (the
same requests), and its 95% interval comes from a paired bootstrap over requests, seeded, so two runs of
the same table agree to the digit.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from echolm_lab.bench.answers_table import CHEAP, CHEAP_WITH_EXAMPLES, STRONG, Answer
from echolm_lab.bench.workloads import Workload
from echolm_lab.datasets import QARecord

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class PolicyScore:
    policy: str
    requests: int  # requests scored (those with every choice the policy needs in the table)
    quality: float
    difference: float  # quality minus strong-only's, on the same requests
    interval: tuple[float, float]  # 95% paired bootstrap interval of the difference
    shares: dict[str, float]  # share of requests per choice


def scores_by_choice(
    answers: Sequence[Answer], workload: Workload, requests: Sequence[QARecord]
) -> dict[str, dict[str, float]]:
    """request prompt -> choice -> the metric of that choice's answer (requests with a reference only)."""
    if workload.score is None:
        raise ValueError(f"{workload.name} has no reference metric: its answers are judged pairwise")
    items = {item.prompt: item for item in requests}
    scored: dict[str, dict[str, float]] = {}
    for answer in answers:
        item = items.get(answer.item)
        if item is None or answer.choice not in (STRONG, CHEAP, CHEAP_WITH_EXAMPLES):
            continue
        scored.setdefault(answer.item, {})[answer.choice] = workload.score(answer.answer, item)
    return scored


Policy = Callable[[str], str]  # request prompt -> choice


def score_policy(name: str, policy: Policy, scored: Mapping[str, Mapping[str, float]], *, seed: int = 7) -> PolicyScore:
    chosen = {prompt: policy(prompt) for prompt in scored}
    usable = [p for p in scored if STRONG in scored[p] and chosen[p] in scored[p]]
    if not usable:
        raise ValueError(f"no request has both strong-only's answer and {name}'s in the table")
    mine = [scored[p][chosen[p]] for p in usable]
    theirs = [scored[p][STRONG] for p in usable]
    differences = [a - b for a, b in zip(mine, theirs, strict=True)]
    shares: dict[str, float] = {}
    for p in usable:
        shares[chosen[p]] = shares.get(chosen[p], 0.0) + 1 / len(usable)
    return PolicyScore(
        policy=name,
        requests=len(usable),
        quality=sum(mine) / len(mine),
        difference=sum(differences) / len(differences),
        interval=paired_bootstrap(differences, seed=seed),
        shares=shares,
    )


def paired_bootstrap(differences: Sequence[float], *, seed: int = 7, level: float = 0.95) -> tuple[float, float]:
    """The `level` interval of the mean paired difference, by resampling requests with replacement."""
    rng = random.Random(seed)
    n = len(differences)
    means = sorted(sum(differences[rng.randrange(n)] for _ in range(n)) / n for _ in range(BOOTSTRAP_RESAMPLES))
    tail = (1 - level) / 2
    return means[int(tail * BOOTSTRAP_RESAMPLES)], means[
        min(int((1 - tail) * BOOTSTRAP_RESAMPLES), BOOTSTRAP_RESAMPLES - 1)
    ]


def fixed(choice: str) -> Policy:
    """Every request to one choice: strong-only, cheap-only, cheap with examples for all."""
    return lambda prompt: choice


def oracle(scored: Mapping[str, Mapping[str, float]]) -> Policy:
    """The cheapest choice that does as well as the strong tier on each request: what any router could at
    best offload at strong-only's quality (a ceiling, not a router: it reads the answers)."""

    def choose(prompt: str) -> str:
        row = scored[prompt]
        for choice in (CHEAP, CHEAP_WITH_EXAMPLES):
            if choice in row and STRONG in row and row[choice] >= row[STRONG]:
                return choice
        return STRONG

    return choose
