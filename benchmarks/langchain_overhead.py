"""What EchoLMChatModel adds to a call, over calling the tier directly (real MiniLM, real embedded Chroma).

    .venv/bin/python benchmarks/langchain_overhead.py [--cache 1000] [--calls 300]

The tiers are instant fake chat models, so the times measure the door and nothing else: embedding,
retrieval, routing, the LangChain layer and recording. The cache is warmed with NQ-open questions
(their gold answers as the stored answers); the measured calls are other NQ-open questions, half of
them paraphrase-like neighbours of cached ones so that both the cheap path (with examples) and the
strong path (admission) are exercised. Writes a Markdown report and JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from tqdm import tqdm

from echolm_lab.datasets import default_nq_path, load_records, split_with_neighbours
from echolm_lab.stats import percentile as lab_percentile
from echolm_middleware.config import load_settings
from echolm_middleware.doors.langchain_chat import EchoLMChatModel
from echolm_middleware.factory import build_engine

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    value = lab_percentile(values, q)
    assert value is not None, "no measurements"
    return value


def timed_ms(call: Any, argument: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call(argument)
    return (time.perf_counter() - started) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=int, default=1000, help="cached examples before measuring (default 1000)")
    parser.add_argument("--calls", type=int, default=300, help="measured calls (default 300)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "langchain-overhead")
    args = parser.parse_args()

    settings, _ = load_settings(ROOT / "config.yaml")
    store_dir = Path(tempfile.mkdtemp(prefix="echolm-overhead-"))
    settings = settings.stored_under(store_dir)
    engine = build_engine(settings)
    engine.warm_up()
    records = load_records(default_nq_path())
    vectors = engine.embedder.embed([record.prompt for record in records])
    warm, requests, _paired = split_with_neighbours(
        records, args.cache, args.calls, args.seed, share=0.5, vectors=vectors, min_similarity=0.8
    )
    for record in tqdm(warm, desc="warming the cache", unit="example"):
        engine.admit("default", record.prompt, record.references[0], settings.tiers[-1].name)

    cheap = FakeListChatModel(responses=["a cheap answer"])
    strong = FakeListChatModel(responses=["a strong answer"])
    model = EchoLMChatModel(tiers=[cheap, strong], engine=engine)
    model.invoke("warm the LangChain path once")

    direct, wrapped, reported, tiers = [], [], [], []
    for record in tqdm(requests, desc="measuring", unit="call"):
        # Alternate so both see the same machine state; the tier is the one the wrapper would call.
        ms, _ = timed_ms(strong.invoke, record.prompt)
        direct.append(ms)
        ms, reply = timed_ms(model.invoke, record.prompt)
        wrapped.append(ms)
        decision = reply.response_metadata["echolm"]
        reported.append(float(decision["overhead_ms"]))
        tiers.append(decision["tier"])

    added = [w - statistics.median(direct) for w in wrapped]
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}",
        "cache_entries": engine.store.count("default"),
        "calls": len(requests),
        "share_cheap": round(tiers.count(settings.tiers[0].name) / len(tiers), 3),
        "direct_p50_ms": round(percentile(direct, 50), 3),
        "direct_p99_ms": round(percentile(direct, 99), 3),
        "wrapper_p50_ms": round(percentile(wrapped, 50), 3),
        "wrapper_p99_ms": round(percentile(wrapped, 99), 3),
        "added_p50_ms": round(percentile(added, 50), 3),
        "added_p99_ms": round(percentile(added, 99), 3),
        "engine_prepare_p50_ms": round(percentile(reported, 50), 3),
        "engine_prepare_p99_ms": round(percentile(reported, 99), 3),
        "fail_open": model.fail_open_counts,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = "\n".join(
        [
            "# EchoLMChatModel overhead over calling the tier directly",
            "",
            f"Command: `{summary['command']}`  ",
            f"Machine: {summary['machine']}; one torch thread; "
            f"embedded Chroma with {summary['cache_entries']} entries.",
            "",
            "| measure | p50 ms | p99 ms |",
            "|---|---|---|",
            f"| tier called directly (instant fake) | {summary['direct_p50_ms']} | {summary['direct_p99_ms']} |",
            f"| through EchoLMChatModel | {summary['wrapper_p50_ms']} | {summary['wrapper_p99_ms']} |",
            f"| added per call (wrapper − direct median) | {summary['added_p50_ms']} | {summary['added_p99_ms']} |",
            f"| of which before the tier is called (`overhead_ms`) | {summary['engine_prepare_p50_ms']} | "
            f"{summary['engine_prepare_p99_ms']} |",
            "",
            f"{summary['calls']} calls, {summary['share_cheap']:.0%} routed to the cheap tier; failed open: "
            f"{summary['fail_open'] or 'none'}. The rest of the added time is recording (admission embeds "
            "nothing twice: the query vector is reused) and LangChain's own run bookkeeping.",
            "",
        ]
    )
    (args.out / "report.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
