"""Filling a workload's answers table: the warm pool answered by the strong tier (or an external teacher's
answers), then every request answered by each choice the router has.

Two workers run side by side, one per tier server, so both cores stay busy: the strong one answers the
pool (each answer is admitted into an in-memory engine as it comes) and then the requests; the cheap one
answers the requests without examples and, once the pool is whole, with the examples the engine's own
retrieval picks for each. Answers already in the table are not asked again.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import httpx

from echolm_lab.bench.answers_table import (
    CHEAP,
    CHEAP_WITH_EXAMPLES,
    POOL,
    SIZES,
    STRONG,
    TRAIN_SIZES,
    Answer,
    AnswersTable,
    alias_key,
    answer_key,
    system_hash,
    without_system,
)
from echolm_lab.bench.workloads import Workload, load_workload
from echolm_lab.datasets import QARecord, load_records
from echolm_lab.local_tiers.manifest import MODELS
from echolm_middleware.core.engine import Engine
from echolm_middleware.core.types import ChatRequest
from echolm_middleware.errors import EchoLMError

TENANT = "bench"
ARENA_TEACHER = "gpt-4-0314"


@dataclass(frozen=True)
class TableWorkload:
    """A workload's framing and metric, its warm pool and its requests (disjoint), and, where an external
    model taught the pool, that model's answers by prompt."""

    workload: Workload
    pool: list[QARecord]
    requests: list[QARecord]
    teacher: str | None = None
    teacher_answers: Mapping[str, str] | None = None
    # Items answered like requests but never scored as such: what a learned router trains on, disjoint
    # from the pool and the requests, so that nothing it learns has seen the requests it is measured on.
    train: list[QARecord] = field(default_factory=list)


def table_workload(
    name: str, data_dir: Path, *, pool_size: int, request_size: int, train_size: int = 0, seed: int = 7
) -> TableWorkload:
    """The built-in workloads with warm pools of real size and requests that share no prompt with them.

    Banking77: a seeded split of the train file (pool, then requests, then the train items). NQ-open: the
    dev file is the pool, EfficientQA's dev file the requests and, after them, the train items.
    Arena-Hard: of each topic cluster's two prompts one is the pool, answered by GPT-4-0314 (distillation
    from an external model), the other the request; no prompt is left for training.
    """
    workload = load_workload(name, data_dir)
    rng = random.Random(seed)
    if name == "banking77":
        items = _unique(workload.items)
        rng.shuffle(items)
        asked_end = pool_size + request_size
        return TableWorkload(
            workload, items[:pool_size], items[pool_size:asked_end], train=items[asked_end : asked_end + train_size]
        )
    if name == "nq_open":
        pool = _unique(workload.items)[:pool_size]
        asked = {item.prompt for item in pool}
        others = _unique(load_records(data_dir / "nq_open" / "NQ-open.efficientqa.dev.1.1.jsonl"))
        rng.shuffle(others)
        others = [r for r in others if r.prompt not in asked]
        return TableWorkload(
            workload, pool, others[:request_size], train=others[request_size : request_size + train_size]
        )
    if name == "arena_hard":
        return _arena(workload, data_dir, rng, pool_size, request_size)
    raise EchoLMError(f"no answers table for workload {name!r}: nq_open, banking77 or arena_hard")


def committed_workload(name: str, data_dir: Path, *, seed: int = 7) -> TableWorkload:
    """The workload as its committed answers table was built: `SIZES`' pool and requests, `TRAIN_SIZES`'
    train items (the scripts and studies that read a committed table must see the same items)."""
    if name not in SIZES:
        raise EchoLMError(f"no answers table for workload {name!r}: {', '.join(sorted(SIZES))}")
    pool_size, request_size = SIZES[name]
    return table_workload(name, data_dir, pool_size=pool_size, request_size=request_size,
                          train_size=TRAIN_SIZES[name], seed=seed)  # fmt: skip


def _unique(items: Sequence[QARecord]) -> list[QARecord]:
    seen: dict[str, QARecord] = {}
    for item in items:
        seen.setdefault(item.prompt, item)
    return list(seen.values())


def _arena(workload: Workload, data_dir: Path, rng: random.Random, pool_size: int, request_size: int) -> TableWorkload:
    folder = data_dir / "arena_hard_v0.1"
    kept = {item.prompt for item in workload.items}  # the prompts short enough for the judge
    clusters: dict[str, list[str]] = {}
    for line in (folder / "question.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            prompt = str(row["prompt"]).strip()
            if prompt in kept:
                clusters.setdefault(str(row["cluster"]), []).append(prompt)
    teacher: dict[str, str] = {}
    for line in (folder / "model_answer" / f"{ARENA_TEACHER}.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            messages = row["messages"]
            teacher[str(messages[0]["content"]).strip()] = str(messages[1]["content"]["answer"]).strip()
    pool, requests = [], []
    for prompts in clusters.values():
        pair = list(prompts[:2])
        rng.shuffle(pair)
        if len(pair) == 2 and pair[0] not in teacher:
            pair.reverse()
        if len(pair) == 2 and pair[0] in teacher:  # the pool's prompt needs the teacher's answer
            pool.append(QARecord(pair[0], ()))
            requests.append(QARecord(pair[1], ()))
    return TableWorkload(workload, pool[:pool_size], requests[:request_size], ARENA_TEACHER, teacher)


@dataclass(frozen=True)
class Endpoint:
    """A tier's server as the table names it: where it listens, and what decides its answers."""

    group: str
    api_base: str
    model: str
    model_sha256: str
    server_version: str


def endpoint_of(raw: Mapping[str, Any], group: str) -> Endpoint:
    for entry in raw.get("model_list") or []:
        if entry.get("model_name") == group:
            params = entry.get("litellm_params") or {}
            model = str(params.get("model", "")).split("/", 1)[-1]
            artifact = MODELS.get(model)
            return Endpoint(
                group=group,
                api_base=str(params.get("api_base", "")).rstrip("/"),
                model=model,
                model_sha256=artifact.sha256 if artifact is not None else f"unknown:{model}",
                server_version=f"llama-cpp-python {metadata.version('llama_cpp_python')}" if artifact else "remote",
            )
    raise EchoLMError(f"no model group {group!r} in the config's model_list")


J = TypeVar("J")


def on_each_endpoint(jobs: Sequence[J], endpoints: Sequence[Endpoint], handle: Callable[[Endpoint, J], None]) -> None:
    """Work through `jobs` with one thread per endpoint (servers of one model), each taking the next job as
    it is free; the first failure stops the other threads at their next job and is raised here."""
    work: queue.Queue[J] = queue.Queue()
    for job in jobs:
        work.put(job)
    failures: list[BaseException] = []

    def worker(endpoint: Endpoint) -> None:
        while not failures:
            try:
                job = work.get_nowait()
            except queue.Empty:
                return
            try:
                handle(endpoint, job)
            except BaseException as exc:  # surfaced below; the other workers stop at their next job
                failures.append(exc)
                return

    threads = [threading.Thread(target=worker, args=(endpoint,), daemon=True) for endpoint in endpoints]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def ask(endpoint: Endpoint, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """One chat completion from the server itself (no proxy between): the answer, its tokens, its latency."""
    started = time.perf_counter()
    response = httpx.post(
        f"{endpoint.api_base}/chat/completions",
        json={"model": endpoint.model, "messages": messages, **params},
        timeout=600,
    )
    response.raise_for_status()
    body = response.json()
    choice, usage = body["choices"][0], body.get("usage") or {}
    return {
        "answer": str(choice["message"].get("content") or ""),
        "finish_reason": choice.get("finish_reason"),
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
        "latency_s": time.perf_counter() - started,
    }


Progress = Callable[[str], None]


def record_table(
    source: TableWorkload,
    table: AnswersTable,
    engine: Engine,
    *,
    strong: Endpoint,
    cheap: Endpoint,
    asker: Callable[[Endpoint, list[dict[str, Any]], Mapping[str, Any]], dict[str, Any]] = ask,
    done: Progress = lambda choice: None,
) -> dict[str, int]:
    """Answer whatever the table lacks; the number of answers asked per choice."""
    workload = source.workload
    params = {"temperature": 0.0, "max_tokens": workload.max_tokens}
    instructions = workload.system_prompt or ""
    asked: dict[str, int] = {POOL: 0, STRONG: 0, CHEAP: 0, CHEAP_WITH_EXAMPLES: 0}
    pool_whole = threading.Event()
    failures: list[BaseException] = []

    def answer(
        endpoint: Endpoint, item: QARecord, choice: str, messages: list[dict[str, Any]], shown: list[str]
    ) -> Answer:
        key = answer_key(endpoint.model_sha256, endpoint.server_version, messages, params)
        if choice == CHEAP_WITH_EXAMPLES and not shown:
            # No example was worth showing: the request goes out as asked, so this choice's answer is the
            # cheap tier's own. It is kept under a key of its own (a line per choice), asked once at most.
            key, same = alias_key(key, choice), key
            if table.get(key) is None and (plain := table.get(same)) is not None:
                table.add(replace(plain, key=key, choice=choice, examples=[], created_at=time.time()))
        kept = table.get(key)
        if kept is None:
            reply = asker(endpoint, messages, params)
            kept = Answer(
                key=key, workload=workload.name, item=item.prompt, choice=choice, tier=endpoint.group,
                model_sha256=endpoint.model_sha256, server_version=endpoint.server_version,
                messages=without_system(messages), system_sha256=system_hash(messages), params=dict(params),
                examples=shown, created_at=time.time(), **reply,
            )  # fmt: skip
            table.add(kept)
            asked[choice] += 1
        done(choice)
        return kept

    def strong_side() -> None:
        for item in source.pool:
            if source.teacher_answers is not None:
                text = source.teacher_answers[item.prompt]
                done(POOL)
            else:
                text = answer(strong, item, POOL, workload.messages(item), []).answer
            # Admitted as a live answer would be: the same screens, under the workload's system prompt.
            engine.admit(TENANT, item.prompt, text, strong.group, instructions=instructions)
        pool_whole.set()
        for item in [*source.requests, *source.train]:
            answer(strong, item, STRONG, workload.messages(item), [])

    def with_examples(item: QARecord) -> None:
        examples, messages = engine.examples_for(ChatRequest(TENANT, strong.group, workload.messages(item)))
        answer(cheap, item, CHEAP_WITH_EXAMPLES, messages, [e.prompt for e in examples])

    def cheap_side() -> None:
        for item in source.requests:
            answer(cheap, item, CHEAP, workload.messages(item), [])
        pool_whole.wait()
        for item in source.requests:
            with_examples(item)
        for item in source.train:  # the requests first: a run cut short still scores them
            answer(cheap, item, CHEAP, workload.messages(item), [])
            with_examples(item)

    def guarded(side: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                side()
            except BaseException as exc:  # surfaced below; the other side stops at the pool's gate
                failures.append(exc)
                pool_whole.set()

        return run

    workers = [threading.Thread(target=guarded(side), daemon=True) for side in (strong_side, cheap_side)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]
    return asked
