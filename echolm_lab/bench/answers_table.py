"""The answers table: every choice the router has, answered once per request and kept, so that the quality
of any routing policy can be computed exactly (and paired) without asking a model again.

One JSONL file per workload. Each line is one answer: which request, which choice (the strong tier, the
cheap tier without examples, the cheap tier with the examples retrieval picks from the warm pool, or a
warm-pool answer), the exact messages and parameters sent, the model file's hash and the server's
version, and what came back with its token counts and latency. A line's key is a hash of what decides the
answer (model hash, server version, messages, parameters), so a table is reused while nothing of that
changes and a run killed midway resumes where it stopped: lines are appended and flushed one by one, and
a last line cut by the kill is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

# The router's choices, as the table names them.
STRONG = "strong"  # the strongest tier, the request as asked
CHEAP = "cheap"  # the cheap tier, the request as asked
CHEAP_WITH_EXAMPLES = "cheap+examples"  # the cheap tier, with the examples retrieval picks
POOL = "pool"  # a warm-pool answer by the strong tier, which becomes an example
CHOICES = (STRONG, CHEAP, CHEAP_WITH_EXAMPLES, POOL)
# A fourth choice needs no line of its own: serving the nearest pool answer as it is (no inference).
REUSE = "reuse"
# Warm pool and request set per workload: real sizes (Arena-Hard has 196 topic clusters whose two prompts
# both fit the judge; each gives one pool prompt and one request).
SIZES = {"banking77": (5000, 1000), "nq_open": (3610, 1000), "arena_hard": (250, 250)}
# Items a learned router may train on, disjoint from both (Banking77's train file has about 4,000 more
# prompts; EfficientQA 800 more questions; Arena-Hard none).
TRAIN_SIZES = {"banking77": 1000, "nq_open": 800, "arena_hard": 0}


def system_hash(messages: Sequence[Mapping[str, Any]]) -> str:
    system = "".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
    return hashlib.sha256(system.encode()).hexdigest() if system else ""


def without_system(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(m) for m in messages if m.get("role") != "system"]


def answer_key(
    model_sha256: str, server_version: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
) -> str:
    """What decides an answer at temperature 0, hashed: the same key, the same answer (the live passes
    check how often that holds)."""
    canonical = json.dumps(
        {"model": model_sha256, "server": server_version, "messages": list(messages), "params": dict(params)},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def alias_key(key: str, choice: str) -> str:
    """The key of `choice`'s line when its messages are another choice's (the cheap tier with no example to
    show asks exactly what the cheap tier asks): one line per choice, the same answer."""
    return hashlib.sha256(f"{key}:{choice}".encode()).hexdigest()


@dataclass
class Answer:
    key: str
    workload: str
    item: str  # the request's or the pool item's prompt, as the workload gives it
    choice: str
    tier: str  # the model group that answered (or "reference" for an external teacher's answer)
    model_sha256: str
    server_version: str
    # The messages sent, but for the system message: the workload's, the same on every line, kept as its
    # hash (on Banking77 it is most of each line). The key is of the messages as sent, system message included.
    messages: list[dict[str, Any]]
    system_sha256: str
    params: dict[str, Any]
    answer: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    examples: list[str] = field(default_factory=list)  # the prompts of the examples shown, in order
    created_at: float = 0.0


class KeyedRecord(Protocol):
    """A dataclass with a `key` (what `asdict` needs, and what the table finds it by)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    key: str


R = TypeVar("R", bound=KeyedRecord)


class KeyedJsonl(Generic[R]):
    """An append-only JSONL file of dataclass records read back by their `key`; safe for several threads."""

    def __init__(self, path: Path, record: Callable[..., R]) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._by_key: dict[str, R] = {}
        if path.exists():
            _drop_cut_line(path)
            for row in _read(path, record):
                self._by_key[row.key] = row
        path.parent.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def get(self, key: str) -> R | None:
        return self._by_key.get(key)

    def records(self) -> list[R]:
        return list(self._by_key.values())

    def add(self, row: R) -> None:
        """Append one record and flush it to disk (a kill then loses at most the line being written)."""
        line = json.dumps(asdict(row), ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if row.key in self._by_key:
                return
            with self.path.open("a", encoding="utf-8") as out:
                out.write(line)
                out.flush()
                os.fsync(out.fileno())
            self._by_key[row.key] = row


class AnswersTable(KeyedJsonl[Answer]):
    """A workload's answers table."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, Answer)

    def answers(self) -> list[Answer]:
        return self.records()


def _read(path: Path, record: Callable[..., R]) -> Iterator[R]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                yield record(**json.loads(line))
            except (ValueError, TypeError):
                continue  # the line a kill cut short; it is asked again


def _drop_cut_line(path: Path) -> None:
    """A kill mid-write leaves a last line without its newline: cut it off, so the next append starts clean."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as out:
            out.truncate(data.rfind(b"\n") + 1)
