"""`echolm bench --tables`: per-workload load multiples and pass sizes, and the clear errors around them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from echolm_lab.cli.bench import _run_and_per_workload
from echolm_middleware.errors import EchoLMError

ROOT = Path(__file__).resolve().parents[2]


def test_a_workload_takes_its_own_values_in_place_of_the_runs() -> None:
    run, own = _run_and_per_workload(["1.0", "banking77=1.0,1.3,1.5", "1.5", "arena_hard=1"], float, "--load-multiples")
    assert run == [1.0, 1.5]
    assert own == {"banking77": [1.0, 1.3, 1.5], "arena_hard": [1.0]}


@pytest.mark.parametrize("value", ["fast", "banking77=1.0,x", "1.0,1.5"])
def test_a_value_that_is_not_a_number_or_a_list_without_a_workload_is_refused(value: str) -> None:
    with pytest.raises(EchoLMError, match="--load-multiples"):
        _run_and_per_workload([value], float, "--load-multiples")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--load-multiples", "nq_open=1.0"], "nq_open, which this run does not serve"),
        (["--pass-requests", "banking77=100,200"], "one size for the run and one per workload"),
        (["--pass-requests", "0"], "--pass-requests must be above 0"),
        (["--load-multiples", "banking77=0"], "--load-multiples must be above 0"),
    ],
)
def test_the_bench_refuses_values_it_would_ignore_or_cannot_run_before_starting_anything(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    (tmp_path / "banking77.jsonl").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "echolm_middleware.cli.main", "bench", "--tables", str(tmp_path),
         "--workloads", "banking77", "--results", str(tmp_path / "results"), *flags],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "results").exists()
