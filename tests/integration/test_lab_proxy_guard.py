"""The lab's proxies, ours and the baselines, run LiteLLM with the stream-finalizer guard our doors install."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from echolm_lab.proxy_process import running_proxy

ROOT = Path(__file__).resolve().parents[2]


def test_a_proxy_without_our_hook_still_runs_with_the_stream_finalizer_guard(tmp_path: Path) -> None:
    """Strong-only's proxy loads none of our code; on Python 3.11 it died of CPython's HAMT fault under
    load until the lab launched every proxy with the guard (README "Running several workers")."""
    plain = yaml.safe_load((ROOT / "config.yaml").read_text())
    plain["litellm_settings"].pop("callbacks")  # as the bench's strong-only proxy: LiteLLM alone
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump(plain))
    log = tmp_path / "proxy.log"
    with running_proxy(config, log_path=log):
        text = log.read_text()
    guarded = sys.version_info < (3, 12)
    assert f"lab proxy: LiteLLM stream finalizer guarded: {guarded}" in text
    assert "echolm" not in str(yaml.safe_load(config.read_text())["litellm_settings"])  # no hook of ours


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
