"""`echolm soak` end to end, briefly: the session's tiers, its own Redis, Chroma and two workers, a report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import ROOT, LocalTiers, config_outside_the_checkout

pytestmark = pytest.mark.integration


def _config_of_its_own(folder: Path) -> Path:
    """config.yaml, in a folder of its own (the soak writes next to it)."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config_outside_the_checkout()))
    return path


def test_a_short_soak_answers_every_request_and_reports_memory(local_tiers: LocalTiers, tmp_path: Path) -> None:
    # On the configured ports the soak finds the session's tiers answering and uses them (it stops only
    # servers it started); its Redis, Chroma server and two proxy workers are its own.
    config = _config_of_its_own(tmp_path)
    done = subprocess.run(
        [
            sys.executable, "-m", "echolm_middleware.cli.main", "soak", "--config", str(config),
            "--minutes", "0.25", "--rate", "0.5", "--rss-every", "2", "--workers", "2",
            "--results", str(tmp_path / "results"), "--run", "smoke", "--work", str(tmp_path / "work"),
        ],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "smoke" / "soak.json").read_text())
    assert result["sent"] >= 3
    assert result["errors"] == 0, result["error_kinds"]
    assert result["answered"] == result["sent"]
    assert len(result["rss_mb"]) >= 5
    assert all(mib > 100 for _, mib in result["rss_mb"])  # two workers and their parent, MiniLM loaded
    assert "RSS of the proxy's processes" in (tmp_path / "results" / "smoke" / "README.md").read_text()
    shutil.rmtree(tmp_path / "work", ignore_errors=True)
