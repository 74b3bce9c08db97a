"""Workloads for `echolm bench`: real request sets, how each is asked, and how its answers are scored.

A workload is a list of items (prompt + references), the system prompt that frames them, the metric
that scores an answer (0-1), and the answer length to ask for. Open-ended workloads (Arena-Hard, a user
file without references) have no reference metric: they are scored by the pairwise judge against the
strong-only system's answer to the same request.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from echolm_lab.datasets import QARecord, load_records
from echolm_middleware.errors import EchoLMError
from echolm_middleware.quality_target.answer_match import exact_match, token_f1

JUDGED = "win_rate_vs_strong_only"


@dataclass(frozen=True)
class Workload:
    name: str
    items: list[QARecord]
    system_prompt: str | None
    # The workload's own metric name and scorer; None: judged pairwise against strong-only.
    metric: str
    score: Callable[[str, QARecord], float] | None
    max_tokens: int
    secondary: dict[str, Callable[[str, QARecord], float]] = field(default_factory=dict)

    def messages(self, item: QARecord) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": item.prompt}]

    @property
    def judged(self) -> bool:
        return self.score is None


def nq_open(data_dir: Path) -> Workload:
    records = load_records(data_dir / "nq_open" / "NQ-open.dev.jsonl")
    return Workload(
        name="nq_open",
        items=records,
        system_prompt="Answer the question with a short phrase only, no explanation.",
        metric="exact_match",
        score=lambda answer, item: exact_match(answer, item.references),
        max_tokens=32,
        secondary={"token_f1": lambda answer, item: token_f1(answer, item.references)},
    )


def intent_of(answer: str) -> str:
    """The intent label an answer names: first line, quotes and trailing dots gone, spaces as underscores."""
    first = answer.strip().splitlines()[0] if answer.strip() else ""
    return first.strip().strip("`'\".").strip().lower().replace(" ", "_")


def banking77(data_dir: Path) -> Workload:
    folder = data_dir / "banking77"
    with (folder / "train.csv").open(newline="", encoding="utf-8") as handle:
        records = [QARecord(row["text"].strip(), (row["category"],)) for row in csv.DictReader(handle)]
    intents = json.loads((folder / "categories.json").read_text(encoding="utf-8"))
    system = (
        "Classify the online-banking customer query into exactly one intent. Answer with the intent name "
        "only, exactly as written. Intents: " + ", ".join(intents)
    )
    return Workload(
        name="banking77",
        items=records,
        system_prompt=system,
        metric="intent_accuracy",
        score=lambda answer, item: float(intent_of(answer) == item.references[0]),
        max_tokens=16,
    )


# Arena-Hard prompts the judge can read whole beside two answers within JUDGE_MAX_CHARS (2,000): 439 of the
# 500 (median 136 characters). The 61 longer ones (up to several thousand characters) would be cut in the
# judge's prompt, and their prefill alone took 20-40 s a call on the 1-thread 1.5B strong tier.
ARENA_MAX_PROMPT_CHARS = 800


def arena_hard(data_dir: Path) -> Workload:
    path = data_dir / "arena_hard_v0.1" / "question.jsonl"
    if not path.exists():
        raise EchoLMError(f"no Arena-Hard questions at {path}")
    items = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                prompt = str(json.loads(line)["prompt"]).strip()
                if len(prompt) <= ARENA_MAX_PROMPT_CHARS:
                    items.append(QARecord(prompt, ()))
    # 96 tokens: a paragraph or a short code block, which the judge still sees whole within its budget; on
    # the 1-thread 1.5B strong tier an answer generates at about 5 tokens a second, so every token counts.
    return Workload(name="arena_hard", items=items, system_prompt=None, metric=JUDGED, score=None, max_tokens=96)


def user_file(path: Path, *, max_tokens: int = 128) -> Workload:
    """Any JSONL/CSV with `prompt` (or `question`) and optional `reference`: judged where none is given.

    With references on every line the metric is token F1 against them (exact match reported beside it);
    otherwise the pairwise judge decides, as for Arena-Hard.
    """
    records = load_records(path)
    if not records:
        raise EchoLMError(f"{path}: no requests")
    with_references = all(record.references for record in records)
    return Workload(
        name=path.stem,
        items=records,
        system_prompt=None,
        metric="token_f1" if with_references else JUDGED,
        score=(lambda answer, item: token_f1(answer, item.references)) if with_references else None,
        max_tokens=max_tokens,
        secondary={"exact_match": lambda answer, item: exact_match(answer, item.references)} if with_references else {},
    )


BUILT_IN: dict[str, Callable[[Path], Workload]] = {
    "nq_open": nq_open,
    "banking77": banking77,
    "arena_hard": arena_hard,
}


def load_workload(name_or_path: str, data_dir: Path) -> Workload:
    """A built-in workload by name, else a user file by path."""
    if name_or_path in BUILT_IN:
        return BUILT_IN[name_or_path](data_dir)
    path = Path(name_or_path)
    if not path.exists():
        raise EchoLMError(f"{name_or_path!r} is neither a built-in workload ({', '.join(BUILT_IN)}) nor a file")
    return user_file(path)


@dataclass(frozen=True)
class Split:
    warm: list[QARecord]
    requests: list[QARecord]


def split_workload(items: Sequence[QARecord], *, warm: int, requests: int, seed: int) -> Split:
    """A seeded shuffle into a warm-up pool and a request set that share no prompt.

    A plain random split keeps the workload's own repetition (about 16% of NQ-open queries have a close
    neighbour, about 90% of Banking77's), which is what users' traffic looks like: no hand-picked pairs.
    """
    unique = list({item.prompt: item for item in items}.values())
    if warm + requests > len(unique):
        raise EchoLMError(f"asked for {warm} warm-up + {requests} requests but the workload has {len(unique)}")
    rng = random.Random(seed)
    rng.shuffle(unique)
    return Split(warm=unique[:warm], requests=unique[warm : warm + requests])
