"""The demo compares systems on the same cores: strong-only gets two strong servers, as EchoLM gets a cheap
and a strong one (README, "What we saw")."""

from __future__ import annotations

from pathlib import Path

import yaml

from echolm_lab.demo import equal_cores
from echolm_lab.local_tiers.assemble import default_model_dir
from echolm_middleware.config import load_settings, read_config_file

ROOT = Path(__file__).resolve().parents[2]


def test_strong_only_runs_on_two_strong_servers_beside_echolms_cheap_and_strong_ones(tmp_path: Path) -> None:
    raw = read_config_file(ROOT / "config.yaml")
    settings, _ = load_settings(ROOT / "config.yaml")

    # The models `make models` keeps (verified once, by their sidecars): a directory of its own would fetch
    # and assemble 1.5 GB of GGUF for a test that reads only the config it writes.
    config, strong_only, specs = equal_cores(raw, settings, default_model_dir(), tmp_path)

    written = yaml.safe_load(config.read_text())
    servers = [e["litellm_params"]["api_base"] for e in written["model_list"] if e["model_name"] == strong_only]
    strong = next(e for e in written["model_list"] if e["model_name"] == "strong")["litellm_params"]["api_base"]
    assert len(servers) == 2 and len(set(servers)) == 2 and strong in servers
    # Every server the proxy names is started, the second strong one included.
    started = {f"http://127.0.0.1:{spec.port}/v1" for spec in specs}
    assert set(servers) <= started
    # The baseline is one group of two servers, sent to the less busy one; EchoLM's tiers are the config's own.
    assert written["router_settings"]["routing_strategy"] == "least-busy"
    assert [t.name for t in settings.tiers] == ["cheap", "strong"]
    assert written["litellm_settings"]["callbacks"] == "echolm_middleware.doors.litellm_proxy.proxy_handler"
