"""Which local tiers a LiteLLM config needs: entries served by our llama.cpp servers on loopback."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from echolm_lab.local_tiers.manifest import MODELS
from echolm_lab.local_tiers.servers import TierSpec, tier_specs

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def local_models_in(config: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(alias, port) for each model_list entry that names a manifest model at a loopback api_base."""
    wanted: dict[str, int] = {}
    for entry in config.get("model_list") or []:
        params = entry.get("litellm_params") or {} if isinstance(entry, Mapping) else {}
        model, api_base = str(params.get("model", "")), params.get("api_base")
        alias = model.split("/", 1)[-1]
        if alias not in MODELS or not isinstance(api_base, str):
            continue
        url = urlparse(api_base)
        if url.hostname in _LOOPBACK and url.port:
            wanted[alias] = url.port
    return sorted(wanted.items(), key=lambda item: item[1])


def specs_for_config(config: Mapping[str, Any], model_dir: Path, *, n_ctx: int = 2048) -> list[TierSpec]:
    """Tier specs (models fetched and verified) for every local model the config uses, on its port."""
    specs = []
    for alias, port in local_models_in(config):
        specs += tier_specs([alias], model_dir, port_base=port, n_ctx=n_ctx)
    return specs
