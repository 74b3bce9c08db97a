"""State survives a proxy restart: the examples in Chroma and the decisions behind `echolm explain`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import CHEAP, CONFIG, STRONG, ProxyFactory, ask

pytestmark = pytest.mark.integration


def test_examples_and_decisions_survive_a_restart(start_proxy_for: ProxyFactory, tmp_path: Path) -> None:
    first = start_proxy_for(state_dir=tmp_path)
    _, headers = ask(first, "Who discovered penicillin?")
    assert headers["x-echolm-tier"] == STRONG
    first_id = headers["x-echolm-request-id"]
    first.wait_recorded(first_id)
    first.stop()

    second = start_proxy_for(state_dir=tmp_path)
    _, headers = ask(second, "who was the discoverer of penicillin")
    assert headers["x-echolm-tier"] == CHEAP
    assert headers["x-echolm-examples"] == "1"

    explained = subprocess.run(
        [sys.executable, "-m", "echolm_middleware.cli.main", "explain", first_id, "--config", str(CONFIG)],
        capture_output=True, text=True, env=second.env, check=True,
    )  # fmt: skip
    assert first_id in explained.stdout
    assert "recorded, served by strong" in explained.stdout
