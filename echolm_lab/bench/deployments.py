"""What `echolm bench` and `echolm demo` serve each system on, so that every system gets the same cores.

EchoLM and the baselines that mix tiers use the config's tiers (one cheap and one strong llama.cpp
server, one thread each). Strong-only and the semantic cache (which sends its misses to the strong tier)
get those two cores as two strong servers, and small-only as two cheap servers: comparing strong-only on
one core with EchoLM on two would flatter EchoLM. All of them
sit behind one LiteLLM proxy: the replicas form model groups of their own (`strong@x2`, `cheap@x2`)
with least-busy routing, and an idle llama.cpp server takes no CPU, so each system only ever keeps two
servers busy. Tiers that are not local (an API) are used as configured by every system; the report
says so.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from echolm_lab.local_tiers.assemble import default_model_dir
from echolm_lab.local_tiers.from_config import local_models_in, specs_for_config
from echolm_lab.local_tiers.servers import TierSpec, running_tiers

# The callback as the installed package names it: generated configs live outside the checkout.
PROXY_CALLBACK = "echolm_middleware.doors.litellm_proxy.proxy_handler"
REPLICATED = "@x2"
REPLICA_PORTS = (8103, 8104)  # the second cheap and the second strong server


@dataclass(frozen=True)
class Deployment:
    model_list: list[dict[str, Any]]
    specs: list[TierSpec]  # local servers to run, replicas included; empty when the tiers are remote
    cheap_x2: str
    strong_x2: str

    @property
    def local(self) -> bool:
        return bool(self.specs)


def _entry_for(model_list: Sequence[Mapping[str, Any]], group: str) -> dict[str, Any]:
    return copy.deepcopy(dict(next(e for e in model_list if e.get("model_name") == group)))


def bench_deployment(
    raw: Mapping[str, Any],
    cheap: str,
    strong: str,
    *,
    replica_ports: tuple[int, int],
    model_dir: Path | None = None,
) -> Deployment:
    """The config's model groups plus `<group>@x2` groups of two servers each for small- and strong-only."""
    model_list = [copy.deepcopy(dict(e)) for e in raw.get("model_list") or []]
    specs = specs_for_config(raw, model_dir or default_model_dir())
    replicas: list[dict[str, Any]] = []
    replica_specs: list[TierSpec] = []
    for group, port in zip((cheap, strong), replica_ports, strict=True):
        original = _entry_for(model_list, group)
        local = local_models_in({"model_list": [original]})
        copies = [copy.deepcopy(original), copy.deepcopy(original)]
        if local and specs:
            alias = local[0][0]
            copies[1]["litellm_params"]["api_base"] = f"http://127.0.0.1:{port}/v1"
            replica_specs.append(replace(next(s for s in specs if s.alias == alias), port=port))
        for entry in copies:
            entry["model_name"] = group + REPLICATED
        replicas += copies
    all_local = len(replica_specs) == 2
    return Deployment(
        model_list=model_list + replicas,
        specs=[*specs, *replica_specs] if all_local else [],
        cheap_x2=cheap + REPLICATED,
        strong_x2=strong + REPLICATED,
    )


@contextlib.contextmanager
def serving(deployment: Deployment, run_dir: Path) -> Iterator[None]:
    """Run the deployment's local servers for the block; each server gets a run folder of its own."""
    with serving_each(deployment.specs, run_dir):
        yield


@contextlib.contextmanager
def serving_each(specs: Sequence[TierSpec], run_dir: Path) -> Iterator[None]:
    """Run `specs` for the block, each in a run folder of its own: a folder keeps one server per model
    alias, and a deployment runs a model twice (a replica on a second port)."""
    with contextlib.ExitStack() as stack:
        for spec in specs:
            stack.enter_context(running_tiers([spec], run_dir / f"tier-{spec.port}"))
        yield


def widened(deployment: Deployment, group: str) -> list[dict[str, Any]]:
    """The model list with `group` served by both of its servers: its `@x2` entries under its own name.

    Only for work that is not measured (the warm-up answers), so that it takes both cores.
    """
    replicas = [copy.deepcopy(e) for e in deployment.model_list if e.get("model_name") == group + REPLICATED]
    if not replicas:
        return copy.deepcopy(deployment.model_list)
    for entry in replicas:
        entry["model_name"] = group
    return [copy.deepcopy(e) for e in deployment.model_list if e.get("model_name") != group] + replicas


def free_model_group(name: str) -> dict[str, Any]:
    """A zero-priced model group that is never called: reused answers are logged under it (LiteLLM's
    `mock_response` answers before any request leaves), so spend logs show them free."""
    return {
        "model_name": name,
        "litellm_params": {
            "model": f"openai/{name}",
            "api_base": f"http://{name}.invalid/v1",
            "api_key": "unused",
            "input_cost_per_token": 0.0,
            "output_cost_per_token": 0.0,
        },
    }


def write_proxy_config(
    raw: Mapping[str, Any],
    deployment: Deployment,
    path: Path,
    *,
    with_echolm: bool,
    widen: str | None = None,
    reuse: Mapping[str, Any] | None = None,
) -> Path:
    """A proxy config for the bench: ours when `with_echolm`, else LiteLLM alone; `widen`: see `widened`;
    `reuse`: the `echolm.routing.reuse` settings, its zero-priced model group added to the model list."""
    config = copy.deepcopy(dict(raw))
    config["model_list"] = widened(deployment, widen) if widen else deployment.model_list
    if with_echolm and reuse is not None:
        group = reuse["model_group"]
        if all(entry.get("model_name") != group for entry in config["model_list"]):
            config["model_list"] = [*config["model_list"], free_model_group(group)]
        echolm = dict(config.get("echolm") or {})
        echolm["routing"] = {**dict(echolm.get("routing") or {}), "reuse": dict(reuse)}
        config["echolm"] = echolm
    settings = dict(config.get("litellm_settings") or {})
    if with_echolm:
        settings["callbacks"] = PROXY_CALLBACK
    else:
        settings.pop("callbacks", None)
    config["litellm_settings"] = settings
    # Replicas of one group: send each request to the server with fewer requests in flight.
    config["router_settings"] = {**dict(config.get("router_settings") or {}), "routing_strategy": "least-busy"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
