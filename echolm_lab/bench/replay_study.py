"""Replay by sampling, measured on an answers table: is the answer the upkeep's replay keeps (the medoid of
several strong-tier samples, `core.consistency`) a better cached answer than the strong tier's greedy one?

The pool items measured are first the ones the reuse choice serves on the table's requests (the reuse
model fitted on the warm pool alone, `table_reuse.fit_on_pool`: each request it reuses names the pool item
whose answer it would be served), then the ones retrieval shows most often as examples to the requests.
Each such item is asked `samples - 1` more times at the replay's temperature, sample i with a seed drawn
from the item's prompt and i (`sample_seed`: one seed shared by every item would give every item the same
random draws, and the first run, seeds 1 to 4 for all, scored 23% to 49% by seed on Banking77); a rerun
asks nothing again: the samples are kept in a table of their own beside the answers table, keyed like
every answer; the greedy answer is the pool's own line. The kept answer is chosen exactly as
`upkeep` chooses it: among the answers that ended on their own, the one the others agree with most.

Reported, each paired with a 95% bootstrap interval: the pool items' own score (kept against greedy),
and the reused requests' score when the reuse serves the kept answer instead of the greedy one (the same
reuse decisions, so the same offload), beside strong-only's on the same requests.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echolm_lab.bench.answers_table import (
    CHEAP_WITH_EXAMPLES,
    POOL,
    REUSE,
    STRONG,
    Answer,
    AnswersTable,
    answer_key,
    system_hash,
    without_system,
)
from echolm_lab.bench.table_build import Endpoint, TableWorkload, ask, on_each_endpoint
from echolm_lab.bench.table_policies import Embed, pool_answers
from echolm_lab.bench.table_reuse import fit_on_pool, learned_reuse, nearest_candidates, pool_metric
from echolm_lab.bench.table_scores import paired_bootstrap
from echolm_lab.bench.workloads import Workload
from echolm_lab.datasets import QARecord
from echolm_middleware.core.answer_pick import PICK_MAX_TOKENS, distinct_answers, parse_pick, pick_prompt
from echolm_middleware.core.consistency import most_agreed

# The upkeep's replay samples every answer but the first at this temperature (`upkeep._best_answer`).
SAMPLE_TEMPERATURE = 0.7
SAMPLED = "pool-sample"  # the samples table's choice name
PICKED = "pool-pick"  # the judge's replies, kept in the same table


def samples_path(table: Path) -> Path:
    """Where a workload's sampled pool answers are kept: beside its answers table."""
    return table.with_suffix(".samples.jsonl")


def served_by_reuse(source: TableWorkload, answers: Sequence[Answer], embed: Embed) -> dict[str, list[str]]:
    """Pool prompt -> the requests whose reuse would serve its answer, most served first."""
    pool = pool_answers(source, answers)
    fit = fit_on_pool(embed, pool, pool_metric(source))
    if fit is None:
        return {}
    found = nearest_candidates(embed, pool, [item.prompt for item in source.requests])
    choose, _ = learned_reuse(found, fit)
    served: dict[str, list[str]] = {}
    for prompt, candidates in found.items():
        if candidates and choose(prompt) == REUSE:
            served.setdefault(candidates[0].example.prompt, []).append(prompt)
    return dict(sorted(served.items(), key=lambda item: -len(item[1])))


def items_to_sample(
    source: TableWorkload, answers: Sequence[Answer], served: Mapping[str, Sequence[str]], count: int
) -> dict[str, list[str]]:
    """Up to `count` pool items, each with the requests its reuse serves: those the reuse serves first (most
    served first), then those retrieval shows most often as examples to the requests (the cheap tier with
    examples reads them), which no request reuses."""
    chosen = {prompt: list(requests) for prompt, requests in list(served.items())[:count]}
    asked = {item.prompt for item in source.requests}
    shown = Counter(
        example
        for answer in answers
        if answer.choice == CHEAP_WITH_EXAMPLES and answer.item in asked
        for example in answer.examples
    )
    for prompt, _ in shown.most_common():
        if len(chosen) >= count:
            break
        chosen.setdefault(prompt, [])
    return chosen


def sample_seed(prompt: str, sample: int) -> int:
    """The seed of a prompt's `sample`-th sampled answer: fixed (a rerun reproduces it), and unrelated between
    prompts, so no two items share their random draws."""
    digest = hashlib.sha256(f"{sample}\n{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def sample_params(max_tokens: int, seed: int) -> dict[str, Any]:
    return {"temperature": SAMPLE_TEMPERATURE, "max_tokens": max_tokens, "seed": seed}


@dataclass(frozen=True)
class _Ask:
    """One answer to ask the strong tier: its pool prompt, what is sent, and the key it is kept under."""

    prompt: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    key: str
    choice: str  # SAMPLED or PICKED


def _planned(source: TableWorkload, prompts: Sequence[str], reference: Endpoint, per_item: int) -> list[_Ask]:
    """Samples 1..`per_item` of each prompt, keyed by the reference endpoint's model (replicas share it)."""
    items = {item.prompt: item for item in source.pool}
    workload = source.workload
    planned = []
    for prompt in prompts:
        messages = workload.messages(items[prompt])
        for sample in range(1, per_item + 1):
            params = sample_params(workload.max_tokens, sample_seed(prompt, sample))
            key = answer_key(reference.model_sha256, reference.server_version, messages, params)
            planned.append(_Ask(prompt, messages, params, key, SAMPLED))
    return planned


def _held_samples(prompt: str, by_item: Mapping[str, Sequence[Answer]], per_item: int) -> list[Answer] | None:
    """Samples 1..`per_item` of a prompt in order, or None while any is missing."""
    held = {int(a.params.get("seed", -1)): a for a in by_item.get(prompt, [])}
    seeds = [sample_seed(prompt, sample) for sample in range(1, per_item + 1)]
    return [held[seed] for seed in seeds] if all(seed in held for seed in seeds) else None


def _clean(first: Answer, samples: Sequence[Answer]) -> list[str]:
    """As the replay keeps them: the answers that ended on their own, the greedy first (ties keep it)."""
    return [a.answer.strip() for a in [first, *samples] if a.finish_reason in (None, "stop") and a.answer.strip()]


def _pick(workload: Workload, item: QARecord, candidates: Sequence[str], reference: Endpoint) -> _Ask:
    """The judge's question for one pool item: its own messages (the workload's system prompt first, so the
    server's prefix cache holds it) with the candidates listed after the question, asked greedily."""
    messages = workload.messages(item)
    messages[-1] = {"role": "user", "content": pick_prompt(item.prompt, candidates)}
    params = {"temperature": 0.0, "max_tokens": PICK_MAX_TOKENS}
    key = answer_key(reference.model_sha256, reference.server_version, messages, params)
    return _Ask(item.prompt, messages, params, key, PICKED)


def _candidates(
    greedy: Mapping[str, Answer], by_item: Mapping[str, Sequence[Answer]], prompt: str, per_item: int
) -> list[str] | None:
    """The distinct clean answers of a pool item with every sample held (None otherwise)."""
    first, samples = greedy.get(prompt), _held_samples(prompt, by_item, per_item)
    if first is None or samples is None:
        return None
    return distinct_answers(_clean(first, samples))


def _by_item(sampled: Sequence[Answer]) -> dict[str, list[Answer]]:
    by_item: dict[str, list[Answer]] = {}
    for answer in sampled:
        if answer.choice == SAMPLED:
            by_item.setdefault(answer.item, []).append(answer)
    return by_item


def planned_picks(
    source: TableWorkload,
    answers: Sequence[Answer],
    sampled: Sequence[Answer],
    prompts: Sequence[str],
    reference: Endpoint,
    *,
    per_item: int,
) -> list[_Ask]:
    """The judge's questions: one per pool item whose greedy answer and samples are held and differ."""
    greedy = {a.item: a for a in answers if a.choice == POOL}
    by_item = _by_item(sampled)
    items = {item.prompt: item for item in source.pool}
    planned = []
    for prompt in prompts:
        candidates = _candidates(greedy, by_item, prompt, per_item)
        if candidates is not None and len(candidates) > 1:
            planned.append(_pick(source.workload, items[prompt], candidates, reference))
    return planned


def missing_samples(
    source: TableWorkload, prompts: Sequence[str], samples: AnswersTable, reference: Endpoint, *, per_item: int
) -> int:
    """How many of the `per_item` samples of each prompt the table lacks (none: no server need start)."""
    return sum(planned.key not in samples for planned in _planned(source, prompts, reference, per_item))


Asker = Callable[[Endpoint, list[dict[str, Any]], Mapping[str, Any]], dict[str, Any]]


def record_samples(
    source: TableWorkload,
    prompts: Sequence[str],
    samples: AnswersTable,
    endpoints: Sequence[Endpoint],
    *,
    per_item: int,
    asker: Asker = ask,
    done: Callable[[], object] = lambda: None,
) -> int:
    """Ask each pool prompt `per_item` sampled answers (samples 1..per_item) that the table lacks, one worker
    per endpoint (replicas of the strong tier: one model file, one key); the number asked."""
    planned = _planned(source, prompts, endpoints[0], per_item)
    return ask_planned(source, planned, samples, endpoints, asker=asker, done=done)


def ask_planned(
    source: TableWorkload,
    planned: Sequence[_Ask],
    samples: AnswersTable,
    endpoints: Sequence[Endpoint],
    *,
    asker: Asker = ask,
    done: Callable[[], object] = lambda: None,
) -> int:
    """Ask what `planned` names and the table lacks, one worker per endpoint; the number asked."""
    workload = source.workload
    reference = endpoints[0]
    held_before = len(samples)

    def ask_one(endpoint: Endpoint, each: _Ask) -> None:
        if each.key not in samples:
            reply = asker(endpoint, each.messages, each.params)
            samples.add(
                Answer(
                    key=each.key,
                    workload=workload.name,
                    item=each.prompt,
                    choice=each.choice,
                    tier=endpoint.group,
                    model_sha256=reference.model_sha256,
                    server_version=reference.server_version,
                    messages=without_system(each.messages),
                    system_sha256=system_hash(each.messages),
                    params=each.params,
                    **reply,
                )
            )
        done()

    on_each_endpoint(planned, endpoints, ask_one)
    return len(samples) - held_before  # each key is added once: what the table gained is what was asked


@dataclass(frozen=True)
class Paired:
    """A mean paired difference (new minus old) with its 95% interval, over n items."""

    n: int
    old: float
    new: float
    interval: tuple[float, float]

    @property
    def difference(self) -> float:
        return self.new - self.old


def _paired(old: Sequence[float], new: Sequence[float]) -> Paired:
    differences = [b - a for a, b in zip(old, new, strict=True)]
    interval = paired_bootstrap(differences) if differences else (0.0, 0.0)
    return Paired(len(old), sum(old) / max(len(old), 1), sum(new) / max(len(new), 1), interval)


@dataclass(frozen=True)
class ReplayEffect:
    items: int  # pool items with every sample in the table
    changed: int  # of them, those whose kept answer differs from the greedy one
    pool: Paired  # the pool items' own score: greedy (old) against kept (new)
    reused: Paired  # the requests served by those items: reuse of greedy (old) against reuse of kept (new)
    strong_on_reused: float  # strong-only's score on the same requests
    # Beside the replay's own rule, on the same items: a plain vote (the answer given most often, word for
    # word up to case, spacing and a final dot; a tie keeps the earliest of the tied, the greedy one when it
    # is among them), one sample on its own, and the best of the answers by the metric itself: what a
    # perfect judge among them would keep (a ceiling).
    vote: Paired
    one_sample: Paired
    best_of: Paired
    # The strong tier as judge among the distinct answers (`core.answer_pick`), on the pool items and on the
    # requests their reuse serves; None until every judge's reply is in the table.
    judged: Paired | None = None
    judged_reused: Paired | None = None
    judge_asked: int = 0  # items whose answers differed, so the judge was asked
    judge_unparsed: int = 0  # replies naming no candidate (the first, the vote, is kept)


def replay_effect(
    source: TableWorkload,
    answers: Sequence[Answer],
    sampled: Sequence[Answer],
    served: Mapping[str, Sequence[str]],
    embed: Embed,
    *,
    per_item: int,
    reference: Endpoint | None = None,
) -> ReplayEffect:
    """What keeping the replay's answer instead of the greedy one does, on the items `served` names; with the
    `reference` endpoint the judge's replies were keyed by, what keeping the judge's choice does too."""
    metric, score = pool_metric(source), source.workload.score
    assert score is not None  # pool_metric has refused a judged workload
    greedy = {a.item: a for a in answers if a.choice == POOL}
    strong = {a.item: a.answer for a in answers if a.choice == STRONG}
    requests = {item.prompt: item for item in source.requests}
    items = {item.prompt: item for item in source.pool}
    by_item = _by_item(sampled)
    picks = {a.key: a.answer for a in sampled if a.choice == PICKED}
    pool_old, pool_new, reused_old, reused_new, strong_scores, changed = [], [], [], [], [], 0
    voted, sampled_once, best, judged, judged_reused = [], [], [], [], []
    judge_asked = judge_unparsed = judge_missing = 0
    for prompt, asked in served.items():
        first, samples = greedy.get(prompt), _held_samples(prompt, by_item, per_item)
        if first is None or samples is None:
            continue
        clean = _clean(first, samples)
        kept = clean[most_agreed(embed(clean))] if clean else first.answer
        changed += kept != first.answer.strip()
        candidates = distinct_answers(clean)
        chosen = candidates[0] if candidates else first.answer  # one distinct answer (or none): no judge asked
        if len(candidates) > 1 and reference is not None:
            judge_asked += 1
            reply = picks.get(_pick(source.workload, items[prompt], candidates, reference).key)
            index = None if reply is None else parse_pick(reply, candidates)
            judge_missing += reply is None
            judge_unparsed += reply is not None and index is None
            chosen = candidates[0 if index is None else index]
        pool_old.append(metric(first.answer, prompt))
        pool_new.append(metric(kept, prompt))
        voted.append(metric(candidates[0] if candidates else first.answer, prompt))
        sampled_once.append(metric(samples[0].answer, prompt))
        best.append(max((metric(text, prompt) for text in clean), default=pool_old[-1]))
        judged.append(metric(chosen, prompt))
        for request in asked:
            if request in requests and request in strong:
                reused_old.append(score(first.answer, requests[request]))
                reused_new.append(score(kept, requests[request]))
                judged_reused.append(score(chosen, requests[request]))
                strong_scores.append(score(strong[request], requests[request]))
    complete = reference is not None and judge_missing == 0
    return ReplayEffect(
        items=len(pool_old),
        changed=changed,
        pool=_paired(pool_old, pool_new),
        reused=_paired(reused_old, reused_new),
        strong_on_reused=sum(strong_scores) / max(len(strong_scores), 1),
        vote=_paired(pool_old, voted),
        one_sample=_paired(pool_old, sampled_once),
        best_of=_paired(pool_old, best),
        judged=_paired(pool_old, judged) if complete else None,
        judged_reused=_paired(reused_old, judged_reused) if complete else None,
        judge_asked=judge_asked,
        judge_unparsed=judge_unparsed,
    )


def describe_effect(workload: str, effect: ReplayEffect, *, per_item: int) -> list[str]:
    """Markdown lines for one workload's replay effect (points: percentage points of the metric)."""

    def points(paired: Paired) -> str:
        low, high = paired.interval
        return (
            f"{100 * paired.old:.1f}% -> {100 * paired.new:.1f}%, {100 * paired.difference:+.1f} points "
            f"({100 * low:+.1f} to {100 * high:+.1f}), n={paired.n}"
        )

    lines = [
        f"## {workload}: greedy answer + {per_item} samples at temperature {SAMPLE_TEMPERATURE:g}, the medoid kept",
        "",
        f"- pool items sampled (those the reuse serves, then those shown most as examples): {effect.items}; kept "
        f"answer differs from the greedy one: "
        f"{effect.changed} ({effect.changed / max(effect.items, 1):.0%})",
        f"- pool items' own score, greedy -> kept: {points(effect.pool)}",
        f"- requests served by reuse of those items, greedy -> kept: {points(effect.reused)}; strong-only on the "
        f"same requests {100 * effect.strong_on_reused:.1f}%",
        f"- other rules on the same items, greedy -> a plain vote: {points(effect.vote)}; -> one sample alone: "
        f"{points(effect.one_sample)}; -> the best of the answers by the metric (a perfect judge, a ceiling): "
        f"{points(effect.best_of)}",
    ]
    if effect.judged is not None and effect.judged_reused is not None:
        lines.append(
            f"- the strong tier as judge among the distinct answers (`core.answer_pick`; asked on "
            f"{effect.judge_asked} items whose answers differed, {effect.judge_unparsed} replies unreadable, the "
            f"vote kept there), greedy -> judged: {points(effect.judged)}; requests served by reuse: "
            f"{points(effect.judged_reused)}"
        )
    return [*lines, ""]
