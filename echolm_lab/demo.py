"""The main job: real local tiers, the real proxy with our callback, real NQ-open requests, one summary.

1. start the local tiers the config names, and a second strong server; 2. warm the cache: a proxy with
k=0 sends every warm-up question to the strongest tier, whose answers are admitted; 3. for each
augmentation format, restart the proxy on a copy of that warm cache and send the request set over HTTP;
4. send the same requests with `echolm_bypass` to the strongest tier on two servers, no examples, as the
baseline: EchoLM's cheap and strong servers take two cores, so strong-only gets two strong servers on the
same cores (`bench.deployments`); 5. score against the gold answers.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from echolm_lab.bench.deployments import REPLICA_PORTS, REPLICATED, bench_deployment, write_proxy_config
from echolm_lab.datasets import QARecord
from echolm_lab.local_tiers.from_config import specs_for_config
from echolm_lab.local_tiers.servers import TierSpec
from echolm_lab.proxy_process import ProxyProcess, running_proxy
from echolm_lab.stats import percentile
from echolm_middleware.config import Settings, load_settings
from echolm_middleware.quality_target.answer_match import exact_match, token_f1

SYSTEM_PROMPT = "Answer the question with a short phrase only, no explanation."
REUSED = "reuse"  # the summary's column for requests answered from the cache, by no tier


@dataclass(frozen=True)
class DemoOptions:
    config: Path  # the proxy config: the user's tiers, our callback, and a strong-only group on two servers
    strong_only: str  # that group
    records_warm: Sequence[QARecord]
    records_requests: Sequence[QARecord]
    run_dir: Path
    formats: Sequence[str]
    concurrency: int
    max_tokens: int


@dataclass(frozen=True)
class RequestResult:
    record: QARecord
    answer: str
    tier: str
    action: str
    examples: int
    latency_s: float
    request_id: str
    error: str | None = None
    overhead_ms: float | None = None


@dataclass
class PassReport:
    name: str
    results: list[RequestResult]
    wall_s: float = 0.0

    @property
    def overhead_ms(self) -> list[float]:
        """What our pre-call hook added to each request it decided (the x-echolm-overhead-ms header)."""
        return [r.overhead_ms for r in self.results if r.action in ("route", "reuse") and r.overhead_ms is not None]


def _client(proxy: ProxyProcess) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{proxy.url}/v1", api_key=proxy.master_key, timeout=300, max_retries=0)


def ask(client: Any, model: str, record: QARecord, max_tokens: int, bypass: bool = False) -> RequestResult:
    """One chat request through the proxy; the decision comes back in the response headers."""
    started = time.perf_counter()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": record.prompt}],
            max_tokens=max_tokens,
            temperature=0,
            extra_body={"metadata": {"echolm_bypass": True}} if bypass else None,
        )
        completion = raw.parse()
        headers = raw.headers
        answer = completion.choices[0].message.content or ""
        action = headers.get("x-echolm-action", "unknown")
        tier = headers.get("x-echolm-tier", model).removesuffix(REPLICATED)  # a replica group is its tier
        return RequestResult(
            record=record,
            answer=answer.strip(),
            tier=REUSED if action == "reuse" else tier,
            action=action,
            examples=int(headers.get("x-echolm-examples", "0")),
            latency_s=time.perf_counter() - started,
            request_id=headers.get("x-echolm-request-id", ""),
            overhead_ms=float(headers["x-echolm-overhead-ms"]) if "x-echolm-overhead-ms" in headers else None,
        )
    except Exception as exc:  # a failed request is reported in the table, not fatal to the run
        return RequestResult(record, "", model, "error", 0, time.perf_counter() - started, "", str(exc)[:200])


def send_all(
    proxy: ProxyProcess, model: str, records: Sequence[QARecord], *, concurrency: int, max_tokens: int,
    bypass: bool, label: str,
) -> PassReport:  # fmt: skip
    """Closed loop: `concurrency` clients send the records in order; a progress bar shows the pass."""
    client = _client(proxy)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool, tqdm(total=len(records), desc=label, unit="req") as bar:
        futures = [pool.submit(ask, client, model, record, max_tokens, bypass) for record in records]
        results = []
        for future in futures:
            results.append(future.result())
            bar.update(1)
    return PassReport(label, results, wall_s=time.perf_counter() - started)


def wait_for_engine(proxy: ProxyProcess, model: str, timeout_s: float = 180.0) -> None:
    """Block until the proxy's engine is built, so that a pass measures steady state, not start-up.

    A bypassed request carries a request id only once the engine is up; it is never recorded.
    """
    client = _client(proxy)
    deadline = time.monotonic() + timeout_s
    while True:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=1,
            extra_body={"metadata": {"echolm_bypass": True}},
        )  # fmt: skip
        if raw.headers.get("x-echolm-request-id"):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy's EchoLM engine was not ready after {timeout_s:.0f} s; see its log")
        time.sleep(1.0)


def _proxy_env(run_dir: Path, **overrides: str) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["ECHOLM_STORE__PATH"] = str(run_dir / "chroma")
    env["ECHOLM_STATE__PATH"] = str(run_dir / "state.db")
    env.update(overrides)
    return env


def equal_cores(
    raw: Mapping[str, Any], settings: Settings, model_dir: Path, run_dir: Path
) -> tuple[Path, str, list[TierSpec]]:
    """The demo's proxy config (the config's tiers with our callback, plus each tier on two servers), the
    model group strong-only is sent to (the strongest tier on two servers: EchoLM's cheap and strong
    servers take two cores, so does the baseline), and the local servers to start."""
    deployment = bench_deployment(
        raw, settings.tiers[0].name, settings.tiers[-1].name, replica_ports=REPLICA_PORTS, model_dir=model_dir
    )
    config = write_proxy_config(raw, deployment, run_dir / "proxy.yaml", with_echolm=True)
    return config, deployment.strong_x2, deployment.specs or specs_for_config(raw, model_dir)


def run_demo(options: DemoOptions, settings: Settings, log: Callable[[str], None] = print) -> list[PassReport]:
    """Warm, then measure each augmentation format and the strong-only baseline on the same requests."""
    strongest = settings.tiers[-1].name
    warm_dir = options.run_dir / "warm"
    log(f"warming the cache: {len(options.records_warm)} questions answered by {strongest!r}")
    # No examples and no cached answers while warming: every warm-up question is the strongest tier's to answer.
    env = _proxy_env(warm_dir, ECHOLM_RETRIEVAL__K="0", ECHOLM_ROUTING__REUSE__ENABLED="false")
    with running_proxy(options.config, env=env, log_path=options.run_dir / "proxy-warm.log") as proxy:
        warm = send_all(proxy, strongest, options.records_warm, concurrency=1, max_tokens=options.max_tokens,
                        bypass=False, label="warm-up")  # fmt: skip
    failed = [r for r in warm.results if r.error]
    if failed:
        log(f"warning: {len(failed)} warm-up requests failed, e.g. {failed[0].error}")
    reports: list[PassReport] = []
    for index, fmt in enumerate(options.formats):
        pass_dir = options.run_dir / f"pass-{fmt}"
        shutil.copytree(warm_dir, pass_dir, dirs_exist_ok=False)
        env = _proxy_env(pass_dir, ECHOLM_AUGMENTATION__FORMAT=fmt)
        with running_proxy(options.config, env=env, log_path=options.run_dir / f"proxy-{fmt}.log") as proxy:
            wait_for_engine(proxy, settings.tiers[0].name)
            if index == 0:
                baseline = send_all(proxy, options.strong_only, options.records_requests,
                                    concurrency=options.concurrency, max_tokens=options.max_tokens, bypass=True,
                                    label="strong only x2")  # fmt: skip
            report = send_all(proxy, strongest, options.records_requests, concurrency=options.concurrency,
                              max_tokens=options.max_tokens, bypass=False, label=f"echolm {fmt}")  # fmt: skip
        reports.append(report)
    reports.append(baseline)
    return reports


def summarize(report: PassReport, tiers: Sequence[str]) -> dict[str, Any]:
    """The summary row of one pass."""
    ok = [r for r in report.results if not r.error]
    row: dict[str, Any] = {
        "system": report.name,
        "requests": len(report.results),
        "errors": len(report.results) - len(ok),
        "share": {tier: sum(r.tier == tier for r in ok) / max(1, len(ok)) for tier in tiers},
        "examples_per_request": statistics.fmean([r.examples for r in ok]) if ok else 0.0,
        "latency": {},
        "exact_match": statistics.fmean([exact_match(r.answer, r.record.references) for r in ok]) if ok else 0.0,
        "token_f1": statistics.fmean([token_f1(r.answer, r.record.references) for r in ok]) if ok else 0.0,
        "throughput_rps": len(ok) / report.wall_s if report.wall_s else 0.0,
        "overhead_p50_ms": percentile(report.overhead_ms, 50),
        "overhead_p99_ms": percentile(report.overhead_ms, 99),
    }
    for tier in [*tiers, "all"]:
        latencies = [r.latency_s for r in ok if tier in ("all", r.tier)]
        row["latency"][tier] = {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)}
    return row


def format_table(rows: Sequence[dict[str, Any]], tiers: Sequence[str]) -> str:
    """The summary table the demo prints."""

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    header = ["system", "requests", *[f"% {t}" for t in tiers], "ex/req"]
    header += [f"{t} p50/p95 s" for t in [*tiers, "all"]] + ["EM", "F1", "req/s", "overhead p50/p99 ms"]
    table = [header]
    for row in rows:
        cells = [row["system"], f"{row['requests']}" + (f" ({row['errors']} err)" if row["errors"] else "")]
        cells += [f"{100 * row['share'][t]:.0f}%" for t in tiers]
        cells.append(f"{row['examples_per_request']:.2f}")
        cells += [f"{seconds(row['latency'][t]['p50'])}/{seconds(row['latency'][t]['p95'])}" for t in [*tiers, "all"]]
        cells += [f"{row['exact_match']:.3f}", f"{row['token_f1']:.3f}", f"{row['throughput_rps']:.2f}"]
        p50, p99 = row["overhead_p50_ms"], row["overhead_p99_ms"]
        cells.append("-" if p50 is None else f"{p50:.1f}/{p99:.1f}")
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table)


def settings_for(config: Path) -> Settings:
    settings, _ = load_settings(config)
    return settings
