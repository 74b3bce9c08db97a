"""What keying examples by their context does to offload on the benchmark's workloads.

An example serves only requests asked in the context it was answered in (system prompt, earlier turns,
answer-shaping parameters: `core.requests.context_key`). The benchmark's workloads each have one fixed
system prompt, so the key should change nothing there. This measures it: the same warm pool and request
set, decided by the real engine (MiniLM, the in-memory store, config.yaml's retrieval and routing, every
tier idle), once with the context key and once with one key for every request (the behaviour before it).
No model is called: `prepare` decides, which is all offload depends on.

    .venv/bin/python benchmarks/context_key_offload.py --warm 300 --requests 300

prints a Markdown table (benchmarks/results/context-key/README.md holds a run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def one_key_for_every_context() -> Iterator[None]:
    """The engine as it was before the context key: every request and example under the same key."""
    with mock.patch("echolm_middleware.core.engine.context_key", lambda *args, **kwargs: ""):
        yield


def decide(workload_name: str, warm_n: int, request_n: int, *, keyed: bool, embedder: object) -> dict[str, object]:
    from echolm_lab.bench.workloads import load_workload, split_workload
    from echolm_middleware.config import load_settings
    from echolm_middleware.core.types import ChatRequest
    from echolm_middleware.factory import build_engine

    settings, raw = load_settings(ROOT / "config.yaml")
    workload = load_workload(workload_name, ROOT.parent / "shared" / "data")
    split = split_workload(workload.items, warm=warm_n, requests=request_n, seed=7)
    with contextlib.nullcontext() if keyed else one_key_for_every_context():
        engine = build_engine(settings, raw["model_list"], embedder=embedder)  # type: ignore[arg-type]
        for item in split.warm:
            answer = item.references[0] if item.references else "An answer written by the strong tier."
            engine.admit("bench", item.prompt, answer, "strong", instructions=workload.system_prompt or "")
        chosen: list[tuple[str, tuple[str, ...]]] = []
        for item in split.requests:
            prepared = engine.prepare(ChatRequest("bench", "strong", workload.messages(item)))
            engine.release(prepared.decision.request_id)  # every tier idle for the next one
            chosen.append((prepared.tier, tuple(trace.id for trace in prepared.decision.examples)))
    return {"chosen": chosen, "examples_held": engine.store.count("bench")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=int, default=300, help="warm-up pool admitted per workload (default: 300)")
    parser.add_argument("--requests", type=int, default=300, help="requests decided per workload (default: 300)")
    parser.add_argument(
        "--workloads", nargs="+", default=["nq_open", "banking77", "arena_hard"], help="built-in workload names"
    )
    args = parser.parse_args()
    os.environ.update({"ECHOLM_STORE__BACKEND": "memory", "ECHOLM_STATE__BACKEND": "memory"})
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from echolm_middleware.backends.minilm import MiniLMEmbedder
    from echolm_middleware.config import EmbedderSettings

    embedder = MiniLMEmbedder(EmbedderSettings(threads=1))
    print(
        "| workload | warm pool | requests | with examples (keyed / one key) "
        "| to the cheap tier (keyed / one key) | requests decided differently |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.workloads:
        from echolm_lab.bench.workloads import load_workload

        size = len(load_workload(name, ROOT.parent / "shared" / "data").items)
        warm_n = min(args.warm, size // 2)
        request_n = min(args.requests, size - warm_n)
        keyed = decide(name, warm_n, request_n, keyed=True, embedder=embedder)
        plain = decide(name, warm_n, request_n, keyed=False, embedder=embedder)
        a, b = keyed["chosen"], plain["chosen"]
        assert isinstance(a, list) and isinstance(b, list)
        with_examples = sum(1 for _, ids in a if ids), sum(1 for _, ids in b if ids)
        cheap = sum(1 for tier, _ in a if tier != "strong"), sum(1 for tier, _ in b if tier != "strong")
        # Example ids hold the context key, so the two runs' ids differ: compare the tier and the count.
        differ = sum(1 for x, y in zip(a, b, strict=True) if x[0] != y[0] or len(x[1]) != len(y[1]))
        print(
            f"| {name} | {warm_n} | {request_n} | {with_examples[0]} / {with_examples[1]} "
            f"| {cheap[0]} / {cheap[1]} | {differ} |"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
