"""Several proxy workers over HTTP: the stack they run on, asking them, and reading their metrics.

The stack is all real, on loopback: two LiteLLM workers, a Chroma server (on a small tmpfs where the
machine lets us mount one), Redis, the session's strong tier and a cheap tier of the stack's own, so a
test may kill any of them without touching the other tests' parts.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from echolm_lab.local_services import Service, free_port, start_chroma, start_redis
from echolm_lab.local_tiers.assemble import default_model_dir
from echolm_lab.local_tiers.from_config import specs_for_config
from echolm_lab.local_tiers.servers import RunningTier, TierSpec, running_tiers
from echolm_lab.proxy_process import ProxyProcess, start_proxy
from echolm_middleware.config import read_config_file
from tests.integration.conftest import (
    CHEAP,
    CONFIG,
    STRONG,
    alias_of,
    config_outside_the_checkout,
    recorded_by,
    wait_recorded,
)

FAULTS = Path(__file__).with_name("faults")


def client_for(proxy: ProxyProcess) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{proxy.url}/v1", api_key=proxy.master_key, max_retries=0, timeout=300)


def ask(proxy: ProxyProcess, question: str, max_tokens: int = 8) -> tuple[str, dict[str, str]]:
    """One non-streamed completion naming the strong tier: (answer, response headers)."""
    with client_for(proxy) as client:  # closed: an open one warns of its socket wherever it is collected
        raw = client.chat.completions.with_raw_response.create(
            model=STRONG, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0
        )
        return raw.parse().choices[0].message.content or "", dict(raw.headers)


def ask_all(proxy: ProxyProcess, questions: list[str]) -> list[tuple[str, dict[str, str]]]:
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda q: ask(proxy, q), questions))


def metrics_text(proxy: ProxyProcess, key: str | None = None) -> str:
    request = urllib.request.Request(f"{proxy.url}/echolm/metrics")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.read().decode())


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(2))
    return total


def wait_routed(proxy: ProxyProcess, timeout_s: float = 240.0) -> None:
    """Until 6 answers in a row were routed: both workers have built their engines."""
    deadline, streak = time.monotonic() + timeout_s, 0
    while streak < 6:
        assert time.monotonic() < deadline, f"workers not ready:\n{proxy.log_tail(60)}"
        _, headers = ask(proxy, "ping")
        streak = streak + 1 if headers.get("x-echolm-action") == "route" else 0


@dataclass
class Stack:
    proxy: ProxyProcess
    redis: Service
    chroma: Service
    chroma_data: Path
    cheap_spec: TierSpec
    cheap: RunningTier
    base: Path
    disk: Path | None  # the tmpfs under chroma_data; None where mounting is refused
    embedder_fault: Path  # while this file exists, every worker's MiniLM raises (faults/sitecustomize.py)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def restart_redis(self) -> None:
        """A new Redis on the same port and data, as its operator would bring it back."""
        self.redis = start_redis(self.redis.port, self.base / "redis")
        self.stack.callback(self.redis.stop)

    def restart_chroma(self) -> None:
        """A new Chroma server on the same port and data."""
        self.chroma.stop()
        self.chroma = start_chroma(self.chroma.port, self.chroma_data)
        self.stack.callback(self.chroma.stop)

    def fail_open(self, reason_prefix: str) -> float:
        """echolm_fail_open_total summed over the reasons starting with `reason_prefix`, both workers."""
        text = metrics_text(self.proxy, self.proxy.master_key)
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("echolm_fail_open_total{") and f'reason="{reason_prefix}' in line
        )

    def recorded_by(self, request_id: str) -> str | None:
        return recorded_by(self.base / "state.db", request_id)

    def wait_recorded(self, request_id: str) -> str:
        return wait_recorded(self.base / "state.db", request_id, 60.0, lambda: self.proxy.log_tail(40))


def _mount_small_disk(path: Path, size: str = "48m") -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def _config_with_cheap_on(port: int, folder: Path) -> Path:
    config = config_outside_the_checkout()
    for entry in config["model_list"]:
        if entry["model_name"] == CHEAP:
            entry["litellm_params"]["api_base"] = f"http://127.0.0.1:{port}/v1"
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def two_worker_stack(base: Path) -> Iterator[Stack]:
    """Start the stack (the session's strong tier must be up) and wait until both workers route."""
    disk = base / "chroma-disk"
    mounted = _mount_small_disk(disk)
    raw = read_config_file(CONFIG)
    cheap_alias = alias_of(CHEAP, raw)
    spec = next(s for s in specs_for_config(raw, default_model_dir()) if s.alias == cheap_alias)
    spec = replace(spec, port=free_port())
    with contextlib.ExitStack() as stack:
        if mounted:
            stack.callback(subprocess.run, ["umount", "-l", str(disk)], check=False)
        redis = start_redis(free_port(), base / "redis")
        stack.callback(redis.stop)
        chroma = start_chroma(free_port(), disk / "data")
        stack.callback(chroma.stop)
        (cheap,) = stack.enter_context(running_tiers([spec], base / "cheap-tier"))
        env = dict(os.environ)
        env["ECHOLM_STORE__SERVER_URL"] = chroma.url
        env["ECHOLM_COORDINATION__REDIS_URL"] = redis.url
        env["ECHOLM_STATE__PATH"] = str(base / "state.db")
        env["ECHOLM_TEST_EMBEDDER_FAULT"] = str(base / "embedder-fault")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), env.get("PYTHONPATH")]))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the proxy gets a fresh one for its two workers
        # Both workers run the upkeep scheduler every 6 s; a zero budget keeps the passes off the model servers.
        env["ECHOLM_UPKEEP__SCHEDULE_MINUTES"] = "0.1"
        env["ECHOLM_UPKEEP__BUDGET_TOKENS"] = "0"
        # A killed tier is tried again at most 10 s after its last failure (60 s by default): the mid-stream
        # kill test waits that long for its restarted server to be routed to again.
        env["ECHOLM_ROUTING__FAILING_TIER_MAX_COOLDOWN_S"] = "10"
        config = _config_with_cheap_on(spec.port, base)
        proxy = start_proxy(config, env=env, workers=2, log_path=base / "proxy.log")
        stack.callback(proxy.stop)
        built = Stack(
            proxy, redis, chroma, disk / "data", spec, cheap, base, disk if mounted else None, base / "embedder-fault"
        )
        built.stack = stack
        wait_routed(proxy)
        yield built
