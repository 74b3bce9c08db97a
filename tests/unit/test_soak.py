"""The soak's own arithmetic: RSS growth, the process tree it samples, and its report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from echolm_lab.bench.soak import SoakResult, growth_pct, process_tree, rss_mib, write_report


def test_growth_compares_the_last_tenth_with_the_first_after_the_start_sample() -> None:
    samples = [(0.0, 50.0)] + [(float(t), 100.0) for t in range(1, 11)] + [(float(t), 110.0) for t in range(11, 21)]

    assert growth_pct(samples) == 10.0
    assert growth_pct(samples[:5]) is None  # too few samples to say


def test_the_process_tree_holds_the_children_and_their_memory_counts() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = process_tree(os.getpid())
        assert os.getpid() in tree and child.pid in tree
        assert rss_mib([os.getpid()]) > 1.0
        assert rss_mib([os.getpid(), child.pid]) > rss_mib([os.getpid()])
    finally:
        child.kill()
        child.wait()


def test_the_report_states_the_figures(tmp_path: Path) -> None:
    result = SoakResult(
        command="echolm soak --minutes 1", rate_rps=0.8, probe_throughput_rps=0.8, minutes=1.0, sent=48,
        answered=47, errors=1, error_kinds={"APITimeoutError": 1}, throughput_rps=0.78, latency_p50_s=2.1,
        latency_p99_s=9.5, share_by_tier={"cheap": 0.4, "strong": 0.6}, rss_mb=[(0.0, 900.0), (15.0, 910.0)],
    )  # fmt: skip

    text = write_report(result, tmp_path).read_text()

    assert "| 0.8 | 1 | 48 | 47 | 1 | 0.78 | 2.1 / 9.5 | cheap 40%, strong 60% |" in text
    assert "first 900.0, last 910.0, max 910.0" in text
    assert (tmp_path / "soak.json").exists()
