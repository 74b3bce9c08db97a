"""`echolm soak`: a bounded load on two proxy workers over Redis and a Chroma server, for as long as asked.

It starts everything on loopback (the config's local tiers, a Redis and a Chroma server, a proxy with
N workers), measures the saturation rate with a short closed loop, then sends Poisson arrivals at that
rate for the whole duration while it samples the resident memory of the proxy's processes. The report
gives throughput, p50/p99 latency, errors, and RSS over time with its growth from the first tenth of
the run to the last.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from tqdm import tqdm

from echolm_lab.bench.load import closed_loop
from echolm_lab.bench.systems import Answered, ModelSystem, ProxyChat
from echolm_lab.bench.workloads import Workload, load_workload
from echolm_lab.datasets import QARecord
from echolm_lab.demo import wait_for_engine
from echolm_lab.local_services import free_port, start_chroma, start_redis
from echolm_lab.local_tiers.assemble import default_model_dir
from echolm_lab.local_tiers.from_config import specs_for_config
from echolm_lab.local_tiers.servers import running_tiers
from echolm_lab.proxy_process import ProxyProcess, running_proxy
from echolm_lab.stats import percentile
from echolm_middleware.config import load_settings

_SENDERS = 64


@dataclass
class SoakOptions:
    config: Path
    data_dir: Path
    run_dir: Path
    workload: str = "nq_open"
    minutes: float = 30.0
    workers: int = 2
    rate_rps: float | None = None  # None: measured, the closed loop's throughput at `clients`
    clients: int = 2
    probe_requests: int = 30
    rss_every_s: float = 15.0
    seed: int = 7


@dataclass
class SoakResult:
    command: str
    rate_rps: float
    probe_throughput_rps: float | None
    minutes: float
    sent: int
    answered: int
    errors: int
    error_kinds: dict[str, int]
    throughput_rps: float
    latency_p50_s: float
    latency_p99_s: float
    share_by_tier: dict[str, float]
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    rss_growth_pct: float | None = None


def process_tree(root: int) -> list[int]:
    """`root` and every descendant (the proxy's uvicorn workers are its children); [] once it is gone."""
    try:
        parent = psutil.Process(root)
        return [root, *(child.pid for child in parent.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def rss_mib(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue  # exited between listing and reading
    return total / 2**20


def _seconds(value: float | None) -> float:
    return float("nan") if value is None else round(value, 3)


def growth_pct(samples: Sequence[tuple[float, float]]) -> float | None:
    """Mean RSS of the last tenth of the samples against the first tenth (after the first sample)."""
    values = [mib for _, mib in samples[1:]]
    if len(values) < 10:
        return None
    tenth = max(1, len(values) // 10)
    first, last = statistics.mean(values[:tenth]), statistics.mean(values[-tenth:])
    return (last - first) / first * 100 if first else None


class Soak:
    def __init__(self, options: SoakOptions, command: str, log: Callable[[str], None] = print) -> None:
        self.options = options
        self.command = command
        self.log = log
        self.settings, self.raw = load_settings(options.config)

    def run(self) -> SoakResult:
        options = self.options
        folder = options.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        workload = load_workload(options.workload, options.data_dir)
        redis = start_redis(free_port(), folder / "redis")
        chroma = start_chroma(free_port(), folder / "chroma")
        try:
            env = dict(os.environ)
            env.update({
                "ECHOLM_STORE__SERVER_URL": chroma.url,
                "ECHOLM_COORDINATION__REDIS_URL": redis.url,
                "ECHOLM_STATE__PATH": str(folder / "state.db"),
            })  # fmt: skip
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            specs = specs_for_config(self.raw, default_model_dir())
            with (
                running_tiers(specs, folder / "tiers"),
                running_proxy(options.config, env=env, workers=options.workers, log_path=folder / "proxy.log") as proxy,
            ):
                strong = self.settings.tiers[-1].name
                wait_for_engine(proxy, strong)
                return self._measure(proxy, workload, strong)
        finally:
            redis.stop()
            chroma.stop()

    def _measure(self, proxy: ProxyProcess, workload: Workload, strong: str) -> SoakResult:
        options = self.options
        system = ModelSystem("echolm", ProxyChat(proxy.url, proxy.master_key), strong)
        probe_rps = None
        rate = options.rate_rps
        if rate is None:
            probe = closed_loop(
                system, workload, workload.items[: options.probe_requests], clients=options.clients, label="saturation"
            )
            probe_rps = probe.throughput_rps
            rate = probe_rps
            self.log(f"saturation: {probe_rps:.3f} req/s with {options.clients} clients; soaking at that rate")
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append(
                    (round(time.monotonic() - started, 1), round(rss_mib(process_tree(proxy.process.pid)), 1))
                )
                stop.wait(options.rss_every_s)

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        answers = self._poisson(system, workload, rate)
        stop.set()
        sampler.join()
        wall = time.monotonic() - started
        ok = [a for a in answers if a.error is None]
        errors: dict[str, int] = {}
        for a in answers:
            if a.error is not None:
                kind = a.error.split(":", 1)[0]
                errors[kind] = errors.get(kind, 0) + 1
        tiers: dict[str, int] = {}
        for a in ok:
            tiers[a.tier] = tiers.get(a.tier, 0) + 1
        latencies = [a.latency_s for a in ok]
        return SoakResult(
            command=self.command,
            rate_rps=round(rate, 4),
            probe_throughput_rps=None if probe_rps is None else round(probe_rps, 4),
            minutes=round(wall / 60, 2),
            sent=len(answers),
            answered=len(ok),
            errors=len(answers) - len(ok),
            error_kinds=errors,
            throughput_rps=round(len(ok) / wall, 4) if wall else 0.0,
            latency_p50_s=_seconds(percentile(latencies, 50)),
            latency_p99_s=_seconds(percentile(latencies, 99)),
            share_by_tier={tier: round(n / len(ok), 3) for tier, n in sorted(tiers.items())} if ok else {},
            rss_mb=samples,
            rss_growth_pct=None if (g := growth_pct(samples)) is None else round(g, 2),
        )

    def _poisson(self, system: ModelSystem, workload: Workload, rate: float) -> list[Answered]:
        """Arrivals at `rate` for the whole duration, cycling through the workload's prompts."""
        rng = random.Random(self.options.seed)
        deadline = self.options.minutes * 60
        items = itertools.cycle(workload.items)
        results: list[Answered] = []
        lock = threading.Lock()
        started = time.perf_counter()
        total = int(rate * deadline)
        with (
            ThreadPoolExecutor(_SENDERS) as pool,
            tqdm(total=total, desc="soak", unit="req", file=sys.stderr) as bar,
        ):

            def one(item: QARecord, arrived: float) -> None:
                served = system.answer(workload.messages(item), workload.max_tokens)
                queued = max(0.0, time.perf_counter() - arrived - served.latency_s)
                with lock:
                    results.append(
                        Answered(served.answer, served.tier, served.latency_s + queued, None, error=served.error)
                    )
                    bar.update(1)

            offset = 0.0
            futures = []
            while True:
                offset += rng.expovariate(rate)
                if offset > deadline:
                    break
                time.sleep(max(0.0, started + offset - time.perf_counter()))
                futures.append(pool.submit(one, next(items), started + offset))
            for future in futures:
                future.result()
        return results


def write_report(result: SoakResult, folder: Path) -> Path:
    """soak.json and README.md in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "soak.json").write_text(json.dumps(asdict(result), indent=2))
    rss = result.rss_mb
    lines = [
        "# Soak: two proxy workers on Redis and a Chroma server",
        "",
        f"Command: `{result.command}`",
        "",
        "| rate (req/s) | minutes | sent | answered | errors | throughput (req/s) | p50 / p99 (s) | share by tier |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result.rate_rps:g} | {result.minutes:g} | {result.sent} | {result.answered} | {result.errors} "
        f"| {result.throughput_rps:g} | {result.latency_p50_s:g} / {result.latency_p99_s:g} "
        f"| {', '.join(f'{t} {s:.0%}' for t, s in result.share_by_tier.items())} |",
        "",
        f"Saturation probe: {result.probe_throughput_rps} req/s (closed loop); "
        f"errors by kind: {result.error_kinds or 'none'}.",
        "",
        f"RSS of the proxy's processes (MiB): first {rss[0][1] if rss else '-'}, last {rss[-1][1] if rss else '-'}, "
        f"max {max((m for _, m in rss), default='-')}; growth from the first tenth to the last: "
        f"{'-' if result.rss_growth_pct is None else f'{result.rss_growth_pct:+.1f}%'}.",
        "",
        "| s | RSS MiB |",
        "|---|---|",
        *[f"| {t:g} | {m:g} |" for t, m in rss],
    ]
    path = folder / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
