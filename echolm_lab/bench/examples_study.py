"""How short the examples can be while they still help: the cheap tier's answers with a shortened selection
beside its answers with the product's default one, on the train items.

On a CPU every prompt token of an example is paid for in prefill (issue 19 measured the cheap tier with two
inline examples slower than the strong tier without them on Banking77), so each example must earn its
tokens. A variant shortens the selection one way: at most `k` examples (`retrieval.k`), or each example's
answer cut at `max_answer_chars` (`augmentation.max_answer_chars`); or moves the least utility an example
needs (`retrieval.threshold`), which decides which requests are shown any example at all. Both the default
and the variant are asked of the same cheap tier, on the train items only (the defaults are tuned there,
never on the requests), with the warm pool in a store of their own, as the answers table is built. An
answer is asked once and kept in WORKLOAD.examples.jsonl, keyed like the table's lines; where a selection's
messages are ones the table already asked (its cheap+examples line, or the cheap tier's own when nothing is
shown), the table's answer is taken and nothing is asked.

The effect per variant: quality paired with the default selection (95% interval), prompt tokens and the
cheap tier's time per request, over every train item and over those whose nearest example is at least as
similar as each of a few bars (the rule "fewer examples when the nearest is very close"), and over those the
default shows no example (where a lower threshold shows one).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echolm_lab.bench.answers_table import CHEAP_WITH_EXAMPLES, Answer, AnswersTable, answer_key, system_hash
from echolm_lab.bench.answers_table import without_system as _without_system
from echolm_lab.bench.table_build import TENANT, Endpoint, TableWorkload, ask, on_each_endpoint
from echolm_lab.bench.table_scores import paired_bootstrap
from echolm_lab.datasets import QARecord
from echolm_middleware.config import Settings
from echolm_middleware.core.ports import Embedder, TokenCounter
from echolm_middleware.core.types import ChatRequest
from echolm_middleware.factory import build_engine

DEFAULT = "default"
SIMILARITY_BARS = (0.8, 0.9, 0.95)
NONE_SHOWN = -1.0  # an Effect's bar for the items the default selection shows no example
Asker = Callable[[Endpoint, list[dict[str, Any]], Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Variant:
    """A selection: the product's default, or one changed by `k`, `max_answer_chars` or `threshold`."""

    name: str
    k: int | None = None
    max_answer_chars: int | None = None
    threshold: float | None = None

    def settings(self, base: Settings) -> Settings:
        retrieval, augmentation = base.retrieval, base.augmentation
        if self.k is not None:
            retrieval = retrieval.model_copy(update={"k": self.k})
        if self.threshold is not None:
            retrieval = retrieval.model_copy(update={"threshold": self.threshold})
        if self.max_answer_chars is not None:
            augmentation = augmentation.model_copy(update={"max_answer_chars": self.max_answer_chars})
        # The pool in memory, the run's own: retrieval as the product does it, over the pool and nothing else.
        return base.model_copy(
            update={
                "retrieval": retrieval,
                "augmentation": augmentation,
                "store": base.store.model_copy(update={"backend": "memory"}),
                "state": base.state.model_copy(update={"backend": "memory"}),
            }
        )


@dataclass(frozen=True)
class Planned:
    """One train item under one selection, before its answer: what would be shown and sent."""

    item: QARecord
    examples: list[str]  # the prompts of the examples the selection shows, in order
    nearest_similarity: float  # of the nearest example found, shown or not (0 when none)
    messages: list[dict[str, Any]]  # what the cheap tier is sent


@dataclass(frozen=True)
class Shown:
    """One train item under one selection: what it showed and what the cheap tier answered."""

    item: QARecord
    examples: int
    nearest_similarity: float  # of the nearest example found, shown or not (0 when none)
    answer: Answer


def examples_path(answers_path: Path) -> Path:
    """`nq_open.jsonl` keeps the study's answers in `nq_open.examples.jsonl` beside it."""
    return answers_path.with_name(answers_path.stem + ".examples.jsonl")


def plan(
    source: TableWorkload,
    items: Sequence[QARecord],
    pool: Mapping[str, str],
    variant: Variant,
    settings: Settings,
    model_list: Sequence[Mapping[str, Any]],
    strong_group: str,
    *,
    embedder: Embedder | None = None,
    tokens: TokenCounter | None = None,
) -> list[Planned]:
    """Per item (of `source.train`, or of its requests for a held-out check): the examples the variant's
    selection shows, the nearest example's similarity, and the messages the cheap tier would be sent
    (`embedder`, `tokens`: the config's when None)."""
    engine = build_engine(variant.settings(settings), list(model_list), embedder=embedder, tokens=tokens)
    instructions = source.workload.system_prompt or ""
    for item in source.pool:
        if item.prompt in pool:
            engine.admit(TENANT, item.prompt, pool[item.prompt], strong_group, instructions=instructions)
    planned = []
    for item in items:
        request = ChatRequest(TENANT, strong_group, source.workload.messages(item))
        candidates = engine.candidates_for(request)
        examples, messages = engine.examples_for(request)
        nearest = max((c.similarity for c in candidates), default=0.0)
        planned.append(Planned(item, [e.prompt for e in examples], nearest, messages))
    return planned


def record_variant(
    source: TableWorkload,
    planned: Sequence[Planned],
    variant: Variant,
    table: AnswersTable,
    study: AnswersTable,
    endpoints: Sequence[Endpoint],
    *,
    asker: Asker = ask,
    done: Callable[[], None] = lambda: None,
) -> tuple[list[Shown], int]:
    """Each planned item's answer: the table's or the study's where its messages were asked before, else
    asked now, the endpoints (one model's servers) taking turns. Returns the items and how many were asked."""
    params = {"temperature": 0.0, "max_tokens": source.workload.max_tokens}
    first = endpoints[0]
    keys = [answer_key(first.model_sha256, first.server_version, p.messages, params) for p in planned]
    to_ask = []
    for one, key in zip(planned, keys, strict=True):
        if table.get(key) is None and study.get(key) is None:
            to_ask.append((one, key))
        else:
            done()

    def ask_one(endpoint: Endpoint, job: tuple[Planned, str]) -> None:
        one, key = job
        reply = asker(endpoint, one.messages, params)
        study.add(
            Answer(
                key=key, workload=source.workload.name, item=one.item.prompt,
                choice=f"{CHEAP_WITH_EXAMPLES} {variant.name}", tier=endpoint.group,
                model_sha256=endpoint.model_sha256, server_version=endpoint.server_version,
                messages=_without_system(one.messages), system_sha256=system_hash(one.messages),
                params=dict(params), examples=one.examples, created_at=time.time(), **reply,
            )
        )  # fmt: skip
        done()

    on_each_endpoint(to_ask, endpoints, ask_one)
    shown = []
    for one, key in zip(planned, keys, strict=True):
        answer = table.get(key) or study.get(key)
        assert answer is not None  # asked above, or held before
        shown.append(Shown(one.item, len(one.examples), one.nearest_similarity, answer))
    return shown, len(to_ask)


@dataclass(frozen=True)
class Effect:
    """A variant against the default selection on the same items (those whose nearest is >= the bar)."""

    bar: float  # least nearest-example similarity of the items counted (0: all; NONE_SHOWN: see there)
    items: int
    changed: int  # items whose messages the variant changed
    quality_default: float
    quality_variant: float
    difference: float
    interval: tuple[float, float]
    prompt_tokens_default: float
    prompt_tokens_variant: float
    latency_default_s: float
    latency_variant_s: float


def effects(
    default: Sequence[Shown], variant: Sequence[Shown], score: Callable[[str, QARecord], float]
) -> list[Effect]:
    """The variant paired with the default item by item, over all items and above each similarity bar."""
    pairs = list(zip(default, variant, strict=True))
    found = []
    for bar in (0.0, *SIMILARITY_BARS, NONE_SHOWN):
        if bar == NONE_SHOWN:
            chosen = [(d, v) for d, v in pairs if d.examples == 0]
        else:
            chosen = [(d, v) for d, v in pairs if d.nearest_similarity >= bar]
        if len(chosen) < 2:
            continue
        mine = [score(d.answer.answer, d.item) for d, _ in chosen]
        theirs = [score(v.answer.answer, v.item) for _, v in chosen]
        differences = [t - m for m, t in zip(mine, theirs, strict=True)]
        found.append(
            Effect(
                bar=bar, items=len(chosen), changed=sum(d.answer.key != v.answer.key for d, v in chosen),
                quality_default=statistics.fmean(mine), quality_variant=statistics.fmean(theirs),
                difference=statistics.fmean(differences), interval=paired_bootstrap(differences),
                prompt_tokens_default=statistics.fmean(d.answer.prompt_tokens for d, _ in chosen),
                prompt_tokens_variant=statistics.fmean(v.answer.prompt_tokens for _, v in chosen),
                latency_default_s=statistics.fmean(d.answer.latency_s for d, _ in chosen),
                latency_variant_s=statistics.fmean(v.answer.latency_s for _, v in chosen),
            )
        )  # fmt: skip
    return found


def _subset(bar: float) -> str:
    if bar == NONE_SHOWN:
        return "the default shows none"
    return "all" if bar == 0 else f"{bar:g}"


def describe(
    workload: str,
    variant: Variant,
    found: Sequence[Effect],
    default_examples: Sequence[int],
    items: str = "train",
) -> list[str]:
    shown = statistics.fmean(default_examples) if default_examples else 0.0
    which = "Train items only" if items == "train" else "The requests, held out: a check, never tuned on"
    lines = [
        f"## {workload}: the cheap tier's examples, {variant.name} against the default selection",
        "",
        f"{which}; the default shows {shown:.2f} examples a request on average. Quality by the workload's "
        "metric, paired item by item (95% bootstrap interval); prompt tokens as the cheap server counted them; time "
        "per request as measured when each answer was asked (both cores busy).",
        "",
        "| items (nearest >=) | n | changed | quality default | quality variant | variant minus default (95% CI) "
        "| prompt tokens | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in found:
        low, high = e.interval
        lines.append(
            f"| {_subset(e.bar)} | {e.items} | {e.changed} | {e.quality_default:.3f} "
            f"| {e.quality_variant:.3f} | {e.difference:+.3f} ({low:+.3f} to {high:+.3f}) "
            f"| {e.prompt_tokens_default:.0f} -> {e.prompt_tokens_variant:.0f} "
            f"| {e.latency_default_s:.2f} -> {e.latency_variant_s:.2f} |"
        )
    return lines
