"""Overhead microbenchmark: retrieval + routing latency and resident memory against cache size.

    python -m echolm_lab.bench.overhead --sizes 1000 10000 100000 --queries 300 --out DIR
    python -m echolm_lab.bench.overhead --entries 10000 --queries 300     # one size, JSON on stdout

For each size a fresh embedded Chroma store (tenant "bench") is filled with that many examples, then
held-out real prompts go through `Engine.prepare`: the whole per-request overhead (embed, retrieve,
select, route, log the decision); the embedder and the store are also timed alone. Each size runs in a
fresh process (the second command above), so its memory figures belong to its own store only.

Entries are real prompts (NQ-open, Banking77, Arena-Hard) with short real answers, embedded with the
real MiniLM. Beyond the distinct real prompts, entries are synthetic: a real vector plus Gaussian noise,
renormalized, and a prompt marked "[synthetic N]"; the report counts them.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from tqdm import tqdm

from echolm_lab.datasets import default_data_dir
from echolm_lab.stats import percentile
from echolm_middleware.config import load_settings
from echolm_middleware.core.engine import Engine, example_id
from echolm_middleware.core.requests import context_key
from echolm_middleware.core.types import ChatRequest, Example
from echolm_middleware.errors import EchoLMError
from echolm_middleware.factory import build_engine

TENANT = "bench"
# The context of the bench's requests (a bare question): the stored examples must be kept under it to serve.
BARE_CONTEXT = context_key("", (), {})
WARM_UP = 5
FILL_BATCH = 1000
# Per-dimension σ on a unit 384-d vector: a synthetic entry sits at cosine ≈ 0.86 to the real one it
# copies, a neighbour rather than a duplicate, so retrieval and selection still have work to do.
SYNTHETIC_NOISE = 0.03
TARGET_P50_MS, TARGET_P99_MS, TARGET_ENTRIES = 20.0, 50.0, 100_000
MAX_ANSWER_CHARS = 4000  # what admission keeps (AdmissionSettings.max_answer_chars)
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BenchPrompt:
    prompt: str
    answer: str


def real_prompts(data_dir: Path) -> list[BenchPrompt]:
    """NQ-open questions, Banking77 queries and Arena-Hard prompts with their answers, duplicates removed."""
    found: list[BenchPrompt] = []
    for name in ("NQ-open.dev.jsonl", "NQ-open.efficientqa.dev.1.1.jsonl"):
        with (data_dir / "nq_open" / name).open(encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        found += [BenchPrompt(row["question"], row["answer"][0]) for row in rows]
    with (data_dir / "banking77" / "train.csv").open(newline="", encoding="utf-8") as handle:
        found += [BenchPrompt(row["text"], row["category"]) for row in csv.DictReader(handle)]
    arena = data_dir / "arena_hard_v0.1"
    with (arena / "model_answer" / "gpt-4-0314.jsonl").open(encoding="utf-8") as handle:
        answers = {row["uid"]: row["messages"][-1]["content"]["answer"] for row in map(json.loads, handle)}
    with (arena / "question.jsonl").open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    found += [BenchPrompt(row["prompt"], answers.get(row["uid"], row["cluster"])[:MAX_ANSWER_CHARS]) for row in rows]
    return [BenchPrompt(p.prompt.strip(), p.answer.strip()) for p in found if p.prompt.strip()]


def split_prompts(
    prompts: Sequence[BenchPrompt], queries: int, seed: int
) -> tuple[list[BenchPrompt], list[BenchPrompt]]:
    """A seeded shuffle into held-out queries (the warm-up ones first) and the pool the store is filled from.

    Prompts that differ only in case or spacing are one: a held-out query must not find its own copy.
    """
    prompts = list({" ".join(p.prompt.lower().split()): p for p in prompts}.values())
    held = queries + WARM_UP
    if len(prompts) <= held:
        raise EchoLMError(f"{len(prompts)} prompts: need more than {held} ({queries} queries + {WARM_UP} warm-up)")
    order = np.random.default_rng(seed).permutation(len(prompts))
    shuffled = [prompts[i] for i in order]
    return shuffled[:held], shuffled[held:]


def synthetic_vectors(sources: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Real vectors plus Gaussian noise, renormalized to unit length."""
    noisy = sources + rng.normal(0.0, SYNTHETIC_NOISE, sources.shape).astype(np.float32)
    normalized: np.ndarray = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return normalized


@dataclass(frozen=True)
class Fill:
    synthetic: int
    embed_s: float
    upsert_s: float


def fill_store(engine: Engine, pool: Sequence[BenchPrompt], entries: int, *, seed: int, progress: bool = True) -> Fill:
    """Upsert `entries` examples: the pool's prompts first, embedded for real, then synthetic neighbours."""
    rng = np.random.default_rng(seed)
    real = min(entries, len(pool))
    dimensions = len(engine.embedder.embed(["dimensions"])[0])
    vectors = np.zeros((real, dimensions), dtype=np.float32)  # not lists of floats, which would inflate RSS
    embed_s = upsert_s = 0.0
    created = time.time()
    with tqdm(total=entries, desc=f"fill {entries:,}", unit="entry", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, entries, FILL_BATCH):
            stop = min(entries, start + FILL_BATCH)
            if start < real:
                began = time.perf_counter()
                embedded = engine.embedder.embed([p.prompt for p in pool[start : min(stop, real)]])
                vectors[start : start + len(embedded)] = np.asarray(embedded, dtype=np.float32)
                embed_s += time.perf_counter() - began
            index = np.arange(start, stop)
            batch = vectors[index % real]  # a copy: the noise never reaches the real vectors
            synthetic = index >= real
            batch[synthetic] = synthetic_vectors(batch[synthetic], rng)
            examples = [_example(engine, pool, i, created) for i in range(start, stop)]
            began = time.perf_counter()
            engine.store.upsert(TENANT, examples, batch.tolist())
            upsert_s += time.perf_counter() - began
            bar.update(stop - start)
    return Fill(synthetic=entries - real, embed_s=embed_s, upsert_s=upsert_s)


def _example(engine: Engine, pool: Sequence[BenchPrompt], index: int, created: float) -> Example:
    """The pool's prompt at `index`, or past the pool's end a synthetic copy of one, as the engine admits it."""
    source = pool[index % len(pool)]
    prompt = source.prompt if index < len(pool) else f"[synthetic {index}] {source.prompt}"
    return Example(
        id=example_id(TENANT, BARE_CONTEXT, prompt),
        prompt=prompt,
        answer=source.answer,
        source_tier=engine.strongest,
        quality=engine.settings.admission.initial_quality,
        created_at=created,
        context=BARE_CONTEXT,
    )


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 (`echolm_lab.stats.percentile`, numpy's linear rule) and the mean, in ms."""
    figures = {f"p{q}": percentile(values, q) for q in (50, 95, 99)}
    return {name: round(value, 3) for name, value in figures.items() if value is not None} | {
        "mean": round(statistics.fmean(values), 3)
    }


def _rss_mib() -> float:
    """This process's resident memory now, in MiB."""
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _peak_rss_mib() -> float:
    """This process's highest resident memory so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _mib_on_disk(directory: Path) -> float:
    return round(sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 2**20, 2)


def measure_size(
    entries: int,
    queries: int,
    *,
    config: Path,
    prompts: Sequence[BenchPrompt],
    seed: int,
    store_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Fill a fresh store under `store_dir` with `entries` examples and time held-out queries, in this process."""
    settings, raw = load_settings(config)
    settings = settings.stored_under(store_dir)
    engine = build_engine(settings, raw.get("model_list") or [])
    engine.warm_up()
    held_out, pool = split_prompts(prompts, queries, seed)
    began = time.perf_counter()
    fill = fill_store(engine, pool, entries, seed=seed, progress=progress)
    fill_s = time.perf_counter() - began
    gc.collect()
    rss_mib = _rss_mib()

    def request(item: BenchPrompt) -> ChatRequest:
        return ChatRequest(TENANT, engine.strongest, [{"role": "user", "content": item.prompt}])

    # Each request is released as soon as it is decided, as a door would once it answered: nothing
    # stays in flight to tilt the next decision or lengthen the load board's bookkeeping.
    for item in held_out[:WARM_UP]:
        engine.release(engine.prepare(request(item)).decision.request_id)
    prepare_ms, embed_ms, nearest_ms, routed, reused, with_examples = [], [], [], 0, 0, 0
    for item in tqdm(held_out[WARM_UP:], desc=f"query {entries:,}", disable=not progress, file=sys.stderr):
        began = time.perf_counter()
        prepared = engine.prepare(request(item))
        prepare_ms.append((time.perf_counter() - began) * 1000)
        engine.release(prepared.decision.request_id)
        routed += prepared.routed
        reused += prepared.decision.action == "reuse"
        with_examples += bool(prepared.decision.examples)
        began = time.perf_counter()
        vector = engine.embedder.embed([item.prompt])[0]
        embed_ms.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        engine.store.nearest(TENANT, vector, settings.retrieval.candidates, context=BARE_CONTEXT)
        nearest_ms.append((time.perf_counter() - began) * 1000)
    return {
        "entries": entries,
        "requests": len(prepare_ms),
        "stored_entries": engine.store.count(TENANT),
        "synthetic_entries": fill.synthetic,
        "routed": routed,
        "reused": reused,  # answered from the cache (the reuse choice): decided as fully as a route
        "with_examples": with_examples,
        "prepare_ms": summary_ms(prepare_ms),
        "embed_ms": summary_ms(embed_ms),
        "nearest_ms": summary_ms(nearest_ms),
        "rss_mib": rss_mib,
        "peak_rss_mib": _peak_rss_mib(),
        "store_mib": _mib_on_disk(settings.store.path),
        "fill_s": round(fill_s, 2),
        "fill_embed_s": round(fill.embed_s, 2),
        "fill_upsert_s": round(fill.upsert_s, 2),
    }


def run_overhead(
    sizes: Sequence[int],
    queries: int,
    *,
    config: Path,
    data_dir: Path,
    seed: int,
    work_dir: Path | None = None,
    progress: bool = True,
    prompts: Sequence[BenchPrompt] | None = None,
) -> dict[str, Any]:
    """Measure each size in a fresh subprocess; `prompts` replaces the real data set (tests pass a few)."""
    prompts = list(prompts) if prompts is not None else real_prompts(data_dir)
    with tempfile.TemporaryDirectory(prefix="echolm-overhead-", dir=work_dir) as scratch:
        prompts_file = Path(scratch) / "prompts.jsonl"
        prompts_file.write_text("".join(json.dumps(asdict(p)) + "\n" for p in prompts), encoding="utf-8")
        measured = [
            _measure_in_subprocess(entries, queries, config, prompts_file, seed, Path(scratch), progress)
            for entries in sizes
        ]
    return {
        "sizes": measured,
        "queries": queries,
        "warm_up": WARM_UP,
        "seed": seed,
        "real_prompts": len(prompts),
        "synthetic_noise": SYNTHETIC_NOISE,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }


def _measure_in_subprocess(
    entries: int, queries: int, config: Path, prompts_file: Path, seed: int, scratch: Path, progress: bool
) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "echolm_lab.bench.overhead", "--entries", str(entries),
        "--queries", str(queries), "--config", str(config), "--prompts", str(prompts_file),
        "--seed", str(seed), "--work-dir", str(scratch),
    ]  # fmt: skip
    if not progress:
        command.append("--no-progress")
    # stderr (progress bars, library warnings) goes straight through; stdout carries the JSON line.
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise EchoLMError(f"measuring {entries:,} entries failed (exit {done.returncode}); see its stderr above")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _verdict(name: str, value: float, target: float) -> str:
    if value <= target:
        return f"{name} {value:.1f} ms ≤ {target:.0f} ms: met ({target - value:.1f} ms to spare)"
    return f"{name} {value:.1f} ms > {target:.0f} ms: missed by {value - target:.1f} ms"


def _floor(size: dict[str, Any], q: int) -> float:
    """The least p`q` the whole path could have: the embedder's own p`q` plus a typical (p50) lookup."""
    return float(size["embed_ms"][f"p{q}"] + size["nearest_ms"]["p50"])


def format_overhead_markdown(result: dict[str, Any]) -> str:
    """A Markdown table per size, where the time goes, and the targets at the largest size."""
    lines = [
        "| entries | synthetic | p50 ms | p95 ms | p99 ms | mean ms | embed p50 | nearest p50 | RSS MiB "
        "| peak RSS MiB | store MiB | fill s |",
        "|" + "---:|" * 12,
    ]
    for size in result["sizes"]:
        prep = size["prepare_ms"]
        lines.append(
            f"| {size['entries']:,} | {size['synthetic_entries']:,} | {prep['p50']:.1f} | {prep['p95']:.1f} "
            f"| {prep['p99']:.1f} | {prep['mean']:.1f} | {size['embed_ms']['p50']:.1f} "
            f"| {size['nearest_ms']['p50']:.1f} | {size['rss_mib']} | {size['peak_rss_mib']} "
            f"| {size['store_mib']} | {size['fill_s']} |"
        )
    largest = max(result["sizes"], key=lambda s: s["entries"])
    embed, nearest = largest["embed_ms"]["mean"], largest["nearest_ms"]["mean"]
    rest = largest["prepare_ms"]["mean"] - embed - nearest
    machine = result["machine"]
    lines += [
        "",
        f"{result['queries']} held-out real queries per size after {result['warm_up']} untimed warm-up ones, "
        f"each size in a fresh process; {machine['cpus']} CPUs, Python {machine['python']}. Synthetic entries "
        f"are real vectors plus Gaussian noise (σ = {result['synthetic_noise']} per dimension), renormalized.",
        "",
        f"Where the time goes at {largest['entries']:,} entries (means): embed {embed:.1f} ms, Chroma nearest "
        f"{nearest:.1f} ms, the rest (selection, routing, decision log) {rest:.1f} ms.",
        "",
        f"Targets (≤ {TARGET_P50_MS:.0f} ms p50, ≤ {TARGET_P99_MS:.0f} ms p99 at {TARGET_ENTRIES:,} entries), "
        f"at {largest['entries']:,} entries: {_verdict('p50', largest['prepare_ms']['p50'], TARGET_P50_MS)}; "
        f"{_verdict('p99', largest['prepare_ms']['p99'], TARGET_P99_MS)}.",
        "",
        # A request cannot be decided before its query is embedded and looked up: the embedder's own tail on
        # the same queries, plus a typical lookup, is as low as the whole path's tail can go on this machine.
        f"Floors on this machine, before any of our own work: p50 {_floor(largest, 50):.1f} ms (the embedder's "
        f"p50 {largest['embed_ms']['p50']:.1f} plus the lookup's {largest['nearest_ms']['p50']:.1f}); p99 "
        f"{_floor(largest, 99):.1f} ms (the embedder alone on the same queries reaches p99 "
        f"{largest['embed_ms']['p99']:.1f} ms: its longest texts fill MiniLM's 256-word-piece window).",
    ]
    return "\n".join(lines) + "\n"


def plot_overhead(result: dict[str, Any], path: Path) -> None:
    """PNG: p50 and p99 prepare latency against entries (log x), resident memory on a second axis."""
    # Figure + the Agg canvas, not pyplot: no global backend switch, no GUI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sizes = sorted(result["sizes"], key=lambda s: s["entries"])
    entries = [s["entries"] for s in sizes]
    figure = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(figure)
    latency = figure.add_subplot()
    latency.plot(entries, [s["prepare_ms"]["p50"] for s in sizes], "o-", label="p50 prepare")
    latency.plot(entries, [s["prepare_ms"]["p99"] for s in sizes], "o-", label="p99 prepare")
    for target, name, style in ((TARGET_P50_MS, "p50", ":"), (TARGET_P99_MS, "p99", "--")):
        latency.axhline(target, linestyle=style, color="grey", linewidth=1, label=f"{name} target ({target:g} ms)")
    latency.set_xscale("log")
    latency.set_xticks(entries, [f"{n:,}" for n in entries])
    latency.set_xticks([], minor=True)
    latency.set_xlabel("cached entries")
    latency.set_ylabel("ms per request")
    latency.set_ylim(bottom=0)
    memory = latency.twinx()
    memory.plot(entries, [s["rss_mib"] for s in sizes], "s--", color="tab:green", label="RSS after filling")
    memory.set_ylabel("MiB")
    memory.set_ylim(bottom=0)
    handles = latency.get_legend_handles_labels()[0] + memory.get_legend_handles_labels()[0]
    latency.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=3, frameon=False)
    measured = ", ".join(f"{s['entries']:,}: n={s.get('requests', '?')}" for s in sizes)
    latency.set_title(
        f"EchoLM per-request overhead and memory against cache size\n(requests timed per size: {measured})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--entries", type=int, help="measure one size in this process and print its JSON")
    mode.add_argument("--sizes", type=int, nargs="+", help="measure each size in its own process; needs --out")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--prompts", type=Path, help="JSONL of {prompt, answer} instead of --data-dir")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", type=Path, help="where the stores go (default: a temporary directory)")
    parser.add_argument("--out", type=Path, help="folder for overhead.json, overhead.md and overhead.png")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    # Before torch loads: one thread each, on a 2-core machine that also serves models.
    for name, value in (("OMP_NUM_THREADS", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_OFFLINE", "1")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # else `import litellm` goes to the network
    if args.prompts:
        with args.prompts.open(encoding="utf-8") as handle:
            prompts = [BenchPrompt(**json.loads(line)) for line in handle if line.strip()]
    else:
        prompts = real_prompts(args.data_dir)
    if args.entries is not None:
        with tempfile.TemporaryDirectory(prefix=f"entries-{args.entries}-", dir=args.work_dir) as store_dir:
            measured = measure_size(
                args.entries, args.queries, config=args.config, prompts=prompts, seed=args.seed,
                store_dir=Path(store_dir), progress=not args.no_progress,
            )  # fmt: skip
        print(json.dumps(measured))
        return
    if args.out is None:
        parser.error("--sizes needs --out")
    result = run_overhead(
        args.sizes, args.queries, config=args.config, data_dir=args.data_dir, seed=args.seed,
        work_dir=args.work_dir, progress=not args.no_progress, prompts=prompts,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    markdown = format_overhead_markdown(result)
    (args.out / "overhead.md").write_text(markdown, encoding="utf-8")
    plot_overhead(result, args.out / "overhead.png")
    print(markdown)


if __name__ == "__main__":
    main()
