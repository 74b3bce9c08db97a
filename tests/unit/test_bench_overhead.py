"""The overhead microbenchmark: a tiny real run (MiniLM, embedded Chroma, one subprocess per size) and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from echolm_lab.bench.overhead import (
    TENANT,
    WARM_UP,
    BenchPrompt,
    fill_store,
    format_overhead_markdown,
    plot_overhead,
    run_overhead,
    split_prompts,
    synthetic_vectors,
)
from echolm_lab.datasets import default_data_dir, default_nq_path, load_records
from echolm_middleware.errors import EchoLMError

ROOT = Path(__file__).resolve().parents[2]
QUERIES = 20
SIZES = (20, 300)


@pytest.fixture(scope="module")
def prompts() -> list[BenchPrompt]:
    """60 real NQ-open questions with their first gold answer: 25 held out, 35 to fill the store with."""
    return [BenchPrompt(r.prompt, r.references[0]) for r in load_records(default_nq_path())[:60]]


@pytest.fixture(scope="module")
def measured(prompts: list[BenchPrompt], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_overhead(
        SIZES,
        QUERIES,
        config=ROOT / "config.yaml",
        data_dir=default_data_dir(),
        seed=11,
        work_dir=tmp_path_factory.mktemp("overhead"),
        progress=False,
        prompts=prompts,
    )


def test_each_size_holds_its_entries_and_counts_the_synthetic_ones(measured: dict[str, Any]) -> None:
    pool = 60 - QUERIES - WARM_UP
    assert [s["entries"] for s in measured["sizes"]] == list(SIZES)
    assert [s["stored_entries"] for s in measured["sizes"]] == list(SIZES)
    assert [s["synthetic_entries"] for s in measured["sizes"]] == [0, 300 - pool]
    assert measured["queries"] == QUERIES
    assert measured["real_prompts"] == 60


def test_latency_figures_are_ordered_and_every_query_was_decided(measured: dict[str, Any]) -> None:
    for size in measured["sizes"]:
        assert size["routed"] + size["reused"] == QUERIES
        for stage in ("prepare_ms", "embed_ms", "nearest_ms"):
            figures = size[stage]
            assert 0 < figures["p50"] <= figures["p95"] <= figures["p99"]
            assert figures["mean"] <= figures["p99"]  # with 20 queries the nearest-rank p99 is the slowest


def test_memory_disk_and_fill_figures_are_real(measured: dict[str, Any]) -> None:
    small, large = measured["sizes"]
    for size in (small, large):
        # torch and MiniLM alone hold a few hundred MiB; the peak covers filling and querying.
        assert 200 < size["rss_mib"] <= size["peak_rss_mib"]
        assert size["fill_s"] >= size["fill_embed_s"] > 0
        assert size["fill_upsert_s"] > 0
    assert 0 < small["store_mib"] < large["store_mib"]


def test_markdown_has_a_row_per_size_and_the_targets_line(measured: dict[str, Any]) -> None:
    markdown = format_overhead_markdown(measured)
    for size in measured["sizes"]:
        p50 = f"{size['prepare_ms']['p50']:.1f}"
        assert f"| {size['entries']:,} | {size['synthetic_entries']:,} | {p50} |" in markdown
    assert "at 300 entries: p50" in markdown


def _result(p50: float, p99: float) -> dict[str, Any]:
    def stage(p50: float, p99: float) -> dict[str, float]:
        return {"p50": p50, "p95": p99, "p99": p99, "mean": p50}

    size = {
        "entries": 100_000,
        "synthetic_entries": 84_073,
        "prepare_ms": stage(p50, p99),
        "embed_ms": stage(9.0, 30.0),
        "nearest_ms": stage(3.0, 8.0),
        "rss_mib": 1234.5,
        "peak_rss_mib": 1500.0,
        "store_mib": 512.25,
        "fill_s": 321.0,
    }
    small = size | {"entries": 1_000, "synthetic_entries": 0, "rss_mib": 800.0}
    return {
        "sizes": [small, size],
        "queries": 300,
        "warm_up": 5,
        "synthetic_noise": 0.03,
        "machine": {"cpus": 2, "python": "3.12.3"},
    }


def test_markdown_says_by_how_much_a_target_is_missed_or_met() -> None:
    missed = format_overhead_markdown(_result(p50=25.5, p99=42.0))
    assert "| 100,000 | 84,073 | 25.5 | 42.0 | 42.0 | 25.5 | 9.0 | 3.0 | 1234.5 | 1500.0 | 512.25 | 321.0 |" in missed
    assert "p50 25.5 ms > 20 ms: missed by 5.5 ms" in missed
    assert "p99 42.0 ms ≤ 50 ms: met (8.0 ms to spare)" in missed
    assert "embed 9.0 ms, Chroma nearest 3.0 ms, the rest (selection, routing, decision log) 13.5 ms" in missed
    # The floors: the embedder's own p50 (9.0) or p99 (30.0) on the same queries, plus the lookup's p50 (3.0).
    assert "p50 12.0 ms (the embedder's p50 9.0 plus the lookup's 3.0); p99 33.0 ms" in missed


def test_plot_writes_a_png(measured: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "overhead.png"
    plot_overhead(measured, path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


def test_queries_are_held_out_of_the_pool_and_fixed_by_the_seed(prompts: list[BenchPrompt]) -> None:
    held, pool = split_prompts(prompts, 10, seed=3)
    assert len(held) == 10 + WARM_UP and len(pool) == 60 - 10 - WARM_UP
    assert not {p.prompt for p in held} & {p.prompt for p in pool}
    assert split_prompts(prompts, 10, seed=3) == (held, pool)
    assert split_prompts(prompts, 10, seed=4)[0] != held
    with pytest.raises(EchoLMError, match="need more than 65"):
        split_prompts(prompts, 60, seed=3)


def test_prompts_differing_only_in_case_or_spacing_count_once() -> None:
    prompts = [BenchPrompt(f"question {i}", "a") for i in range(10)] + [BenchPrompt("QUESTION  3", "b")]
    held, pool = split_prompts(prompts, 2, seed=0)
    assert len(held) + len(pool) == 10


def test_synthetic_vectors_are_unit_length_neighbours_of_their_sources() -> None:
    rng = np.random.default_rng(0)
    sources = rng.normal(size=(50, 384)).astype(np.float32)
    sources /= np.linalg.norm(sources, axis=1, keepdims=True)
    noisy = synthetic_vectors(sources, np.random.default_rng(1))
    assert noisy.shape == (50, 384)
    assert np.allclose(np.linalg.norm(noisy, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(noisy * sources, axis=1)
    assert cosines.min() > 0.8 and cosines.max() < 0.92


def test_fill_keeps_real_vectors_exact_and_marks_the_synthetic_entries(make_engine: Any) -> None:
    kit = make_engine()  # conftest's fakes: word-hash embedder, in-memory store
    pool = [BenchPrompt(f"what is the capital of country number {i}", f"city {i}") for i in range(5)]
    fill = fill_store(kit.engine, pool, 12, seed=0, progress=False)
    assert fill.synthetic == 7
    stored = {e.prompt: e for e in kit.store.examples(TENANT)}
    assert len(stored) == 12
    assert sum(p.startswith("[synthetic ") for p in stored) == 7
    assert stored["[synthetic 7] what is the capital of country number 2"].answer == "city 2"
    for item in pool:
        found = kit.store.nearest(TENANT, kit.embedder.embed([item.prompt])[0], 1)[0]
        assert found.example.prompt == item.prompt
        assert found.similarity == pytest.approx(1.0, abs=1e-5)
