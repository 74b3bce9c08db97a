"""What `echolm bench` serves each system on, so that every system gets the same cores.

EchoLM and the baselines that mix tiers run on the config's own deployment (one cheap and one strong
llama.cpp server, one thread each). Strong-only gets those two cores as two strong servers, and
small-only as two cheap servers, behind the same LiteLLM proxy with least-busy routing: comparing
strong-only on one core with EchoLM on two would flatter EchoLM. Tiers that are not local (an API)
are used as configured for every system; the report says so.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from echolm_middleware.local_tiers.assemble import default_model_dir
from echolm_middleware.local_tiers.from_config import local_models_in, specs_for_config
from echolm_middleware.local_tiers.servers import TierSpec, running_tiers

# The callback as the installed package names it: generated configs live outside the checkout.
PROXY_CALLBACK = "echolm_middleware.integrations.litellm_proxy.proxy_handler"


@dataclass(frozen=True)
class Deployment:
    name: str
    model_list: list[dict[str, Any]]
    specs: list[TierSpec]  # local servers to run; empty when the tiers are remote

    @property
    def local(self) -> bool:
        return bool(self.specs)


def _entry_for(model_list: Sequence[Mapping[str, Any]], group: str) -> dict[str, Any]:
    return copy.deepcopy(dict(next(e for e in model_list if e.get("model_name") == group)))


def _alias_port(entry: Mapping[str, Any]) -> tuple[str, int] | None:
    found = local_models_in({"model_list": [entry]})
    return found[0] if found else None


def deployments(raw: Mapping[str, Any], cheap: str, strong: str, *, replica_port: int) -> dict[str, Deployment]:
    """The config's deployment ("mixed") and, for local tiers, two replicas of one tier each."""
    model_list = [copy.deepcopy(dict(e)) for e in raw.get("model_list") or []]
    specs = specs_for_config(raw, default_model_dir())
    mixed = Deployment("mixed", model_list, specs)
    cheap_local, strong_local = _alias_port(_entry_for(model_list, cheap)), _alias_port(_entry_for(model_list, strong))
    if cheap_local is None or strong_local is None:
        remote = Deployment("as configured", model_list, [])
        return {"mixed": remote, "strong_x2": remote, "cheap_x2": remote}

    def doubled(group: str, alias: str, name: str) -> Deployment:
        replica_entry = _entry_for(model_list, group)
        replica_entry["litellm_params"]["api_base"] = f"http://127.0.0.1:{replica_port}/v1"
        spec = next(s for s in specs if s.alias == alias)
        return Deployment(name, [*model_list, replica_entry], [spec, replace(spec, port=replica_port)])

    return {
        "mixed": mixed,
        "strong_x2": doubled(strong, strong_local[0], "two strong servers"),
        "cheap_x2": doubled(cheap, cheap_local[0], "two cheap servers"),
    }


@contextlib.contextmanager
def serving(deployment: Deployment, run_dir: Path) -> Iterator[None]:
    """Run the deployment's local servers for the block (a replica of a tier gets a run folder of its own)."""
    with contextlib.ExitStack() as stack:
        seen: set[str] = set()
        for index, spec in enumerate(deployment.specs):
            folder = run_dir / ("tiers" if spec.alias not in seen else f"tiers-replica-{index}")
            seen.add(spec.alias)
            stack.enter_context(running_tiers([spec], folder))
        yield


def write_proxy_config(raw: Mapping[str, Any], deployment: Deployment, path: Path, *, with_echolm: bool) -> Path:
    """A proxy config for one deployment: ours when `with_echolm`, else LiteLLM alone."""
    config = copy.deepcopy(dict(raw))
    config["model_list"] = deployment.model_list
    settings = dict(config.get("litellm_settings") or {})
    if with_echolm:
        settings["callbacks"] = PROXY_CALLBACK
    else:
        settings.pop("callbacks", None)
    config["litellm_settings"] = settings
    if len({e["model_name"] for e in deployment.model_list}) < len(deployment.model_list):
        # Replicas of one group: send each request to the server with fewer requests in flight.
        config["router_settings"] = {**dict(config.get("router_settings") or {}), "routing_strategy": "least-busy"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
