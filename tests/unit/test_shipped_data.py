"""The request sets ship with the lab: a clone or a wheel runs the demo, the bench and the tests without a
data folder beside it; ECHOLM_DATA_DIR points the lab at other data in the same layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from echolm_lab.bench.workloads import load_workload
from echolm_lab.datasets import default_data_dir, default_nq_path, load_records

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_data_is_the_copy_inside_the_lab_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECHOLM_DATA_DIR", raising=False)

    assert default_data_dir() == ROOT / "echolm_lab" / "data"
    assert len(load_records(default_nq_path())) == 3610
    assert len(load_records(default_data_dir() / "nq_open" / "NQ-open.efficientqa.dev.1.1.jsonl")) == 1800
    assert len(load_workload("banking77", default_data_dir()).items) > 10_000 - 10
    assert load_workload("arena_hard", default_data_dir()).items
    for licence in ("banking77/LICENSE", "arena_hard_v0.1/LICENSE", "README.md"):
        assert (default_data_dir() / licence).read_text().strip()


def test_the_data_folder_can_be_pointed_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ECHOLM_DATA_DIR", str(tmp_path))

    assert default_data_dir() == tmp_path and default_nq_path() == tmp_path / "nq_open" / "NQ-open.dev.jsonl"


def test_the_wheel_carries_the_data() -> None:
    """pyproject's package data names every shipped file (what setuptools puts in the wheel)."""
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["echolm_lab"]
    shipped = {p.relative_to(ROOT / "echolm_lab") for p in (ROOT / "echolm_lab" / "data").rglob("*") if p.is_file()}
    matched = {p for p in shipped if any(p.match(g) and len(p.parts) == len(Path(g).parts) for g in globs)}
    assert matched == shipped
