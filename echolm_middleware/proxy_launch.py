"""What `echolm proxy` needs before it hands over to `litellm --config`: a checked config and its environment."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

from echolm_middleware.config import Settings, check_tiers_exist, load_settings, model_groups_in


def validate_proxy_config(path: Path) -> Settings:
    """Load and check a proxy config: the `echolm` section parses and every tier is a model group."""
    settings, raw = load_settings(path)
    check_tiers_exist(settings, model_groups_in(raw))
    return settings


def proxy_environment(base: Mapping[str, str] | None = None, *, workers: int = 1) -> dict[str, str]:
    """The environment a proxy needs: no network cost-map fetch, one torch thread, a master key, and
    with several workers a folder where each writes its metrics so that a scrape of any one sums them."""
    env = dict(os.environ if base is None else base)
    if workers > 1 and not env.get("PROMETHEUS_MULTIPROC_DIR"):
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="echolm-metrics-")
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("LITELLM_MASTER_KEY", "sk-echolm-" + secrets.token_hex(16))
    return env
