"""What `echolm bench` writes: summary.json (figures per workload and system), report.md and PNG plots."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echolm_lab.bench.load import LoadPass
from echolm_lab.bench.runner import SystemRun, WorkloadRun
from echolm_lab.stats import percentile

SYSTEMS = ("strong_only", "small_only", "semantic_cache", "difficulty_router", "echolm")
# Targets from the issue: (workload, least throughput ratio to strong-only, most quality points lost).
THROUGHPUT_TARGETS = {"banking77": (2.5, 0.01), "nq_open": (1.5, 0.01)}
OVERHEAD_TARGET_MS = (20.0, 50.0)  # p50, p99 at 100k cached entries


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def pass_figures(load_pass: LoadPass) -> dict[str, Any]:
    """Latency, throughput and tier shares of one pass (errors are counted, not timed; an open-loop pass's
    latency is read past its warm-up)."""
    ok = [a for a in load_pass.answers if a.error is None]
    latencies = [a.latency_s for a in load_pass.steady() if a.error is None]
    ttfts = [a.ttft_s for a in ok if a.ttft_s is not None]
    overheads = [a.overhead_ms for a in ok if a.overhead_ms is not None]
    tiers = sorted({a.tier for a in ok})
    return {
        "load": load_pass.load,
        "requests": len(load_pass.answers),
        "requests_timed": len(latencies),
        "errors": len(load_pass.answers) - len(ok),
        "wall_s": round(load_pass.wall_s, 2),
        "throughput_rps": round(load_pass.throughput_rps, 4),
        "latency_p50_s": _round(percentile(latencies, 50)),
        "latency_p95_s": _round(percentile(latencies, 95)),
        "latency_p99_s": _round(percentile(latencies, 99)),
        "ttft_p50_s": _round(percentile(ttfts, 50)),
        "ttft_p95_s": _round(percentile(ttfts, 95)),
        "share_by_tier": {tier: round(sum(a.tier == tier for a in ok) / len(ok), 3) for tier in tiers},
        "examples_per_request": round(statistics.fmean([a.examples for a in ok]), 3) if ok else 0.0,
        "example_tokens_per_request": round(statistics.fmean([a.example_tokens for a in ok]), 1) if ok else 0.0,
        "overhead_p50_ms": _round(percentile(overheads, 50), 2),
        "overhead_p99_ms": _round(percentile(overheads, 99), 2),
    }


def run_figures(run: SystemRun, p95_bound_s: float) -> dict[str, Any]:
    figures = pass_figures(run.passes[0])
    figures.update(
        operating_point=run.point,
        deployment=run.deployment,
        quality=_round(run.quality),
        **{name: _round(value) for name, value in run.secondary.items()},
    )
    if run.verdicts:
        outcomes = [v.outcome for v in run.verdicts]
        figures["judge"] = {o: outcomes.count(o) for o in ("win", "tie", "loss", "unparsed")}
    open_loop = [(i, p) for i, p in enumerate(run.passes) if i > 0 and p.rate_rps is not None]
    if open_loop:
        figures["open_loop"] = [
            {
                "rate_rps": p.rate_rps,
                **pass_figures(p),
                "quality": _round(run.pass_quality[i]) if i < len(run.pass_quality) else None,
            }
            for i, p in open_loop
        ]
        held = [
            f["rate_rps"]
            for f in figures["open_loop"]
            if f["latency_p95_s"] is not None and f["latency_p95_s"] <= p95_bound_s
        ]
        figures["sustained_rate_rps"] = max(held) if held else None
    return figures


def summarize(
    results: Sequence[WorkloadRun], command: str, p95_bound_s: float, strongest: str = "strong"
) -> dict[str, Any]:
    """summary.json: per workload, each system's default point under `systems`, every point under `sweeps`."""
    workloads: dict[str, Any] = {}
    for result in results:
        systems: dict[str, Any] = {}
        sweeps: dict[str, list[dict[str, Any]]] = {}
        for run in result.runs:
            figures = run_figures(run, p95_bound_s)
            sweeps.setdefault(run.system, []).append(figures)
            systems.setdefault(run.system, figures)  # the first point of each system is its default
        workloads[result.workload.name] = {
            "metric": result.workload.metric,
            "warm_up": len(result.split.warm),
            "requests": len(result.split.requests),
            "systems": systems,
            "sweeps": sweeps,
            "notes": result.notes,
        }
    return {"workloads": workloads, "command": command, "p95_bound_s": p95_bound_s, "strongest_tier": strongest}


def request_rows(results: Sequence[WorkloadRun]) -> list[dict[str, Any]]:
    """One row per request of every pass (requests.jsonl): what the client saw, to look behind a percentile.

    Latency of a Poisson pass runs from the request's arrival, as in the pass's figures.
    """
    rows = []
    for result in results:
        for run in result.runs:
            for load_pass in run.passes:
                for index, answered in enumerate(load_pass.answers):
                    rows.append(
                        {
                            "workload": result.workload.name,
                            "system": run.system,
                            "point": run.point,
                            "load": load_pass.load,
                            "request": index,
                            "tier": answered.tier,
                            "latency_s": _round(answered.latency_s),
                            "ttft_s": _round(answered.ttft_s),
                            "overhead_ms": _round(answered.overhead_ms, 2),
                            "examples": answered.examples,
                            "example_tokens": answered.example_tokens,
                            "error": answered.error,
                        }
                    )
    return rows


def _interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """Piecewise-linear y at x over (x, y) points; None outside their range."""
    ordered = sorted(points)
    for (x0, y0), (x1, y1) in itertools.pairwise(ordered):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if len(ordered) == 1 and abs(ordered[0][0] - x) < 1e-9:
        return ordered[0][1]
    return None


def target_lines(summary: dict[str, Any], overhead: dict[str, Any] | None) -> list[str]:
    """Each target: met or missed, by how much."""
    lines = []
    for name, workload in summary["workloads"].items():
        systems = workload["systems"]
        if "echolm" not in systems or "strong_only" not in systems:
            continue
        echolm, strong = systems["echolm"], systems["strong_only"]
        ratio = echolm["throughput_rps"] / strong["throughput_rps"] if strong["throughput_rps"] else float("nan")
        quality_gap = (strong["quality"] or 0) - (echolm["quality"] or 0)
        if name in THROUGHPUT_TARGETS:
            least, most_lost = THROUGHPUT_TARGETS[name]
            met = ratio >= least and quality_gap <= most_lost
            lines.append(
                f"- {name}: EchoLM throughput {ratio:.2f}x strong-only (target ≥ {least}x), quality "
                f"{echolm['quality']} vs {strong['quality']} ({-quality_gap:+.3f}; target within {most_lost}): "
                f"**{'met' if met else 'missed'}** (closed loop)"
            )
            lines.append(_sustained_rate_line(name, echolm, strong, least, most_lost, summary["p95_bound_s"]))
        curve = [(p["throughput_rps"], p["quality"]) for p in workload["sweeps"]["echolm"] if p["quality"] is not None]
        for baseline in ("semantic_cache", "difficulty_router"):
            for point in workload["sweeps"].get(baseline, []):
                ours = _interpolate(curve, point["throughput_rps"])
                if ours is None:
                    lines.append(
                        f"- {name}: {baseline} ({point['operating_point']}) at {point['throughput_rps']:.3f} req/s "
                        f"is outside EchoLM's measured throughput range: no equal-throughput comparison"
                    )
                    continue
                verdict = "beats" if ours > (point["quality"] or 0) else "does not beat"
                lines.append(
                    f"- {name}: at {point['throughput_rps']:.3f} req/s EchoLM's quality {ours:.3f} {verdict} "
                    f"{baseline} ({point['operating_point']}) {point['quality']}"
                )
        lines += quality_target_lines(name, workload, summary.get("strongest_tier", "strong"))
    if overhead:
        largest = max(overhead["sizes"], key=lambda s: s["entries"])
        p50, p99 = largest["prepare_ms"]["p50"], largest["prepare_ms"]["p99"]
        met = p50 <= OVERHEAD_TARGET_MS[0] and p99 <= OVERHEAD_TARGET_MS[1]
        lines.append(
            f"- overhead at {largest['entries']:,} entries: p50 {p50:.1f} ms / p99 {p99:.1f} ms "
            f"(target ≤ {OVERHEAD_TARGET_MS[0]:.0f} / ≤ {OVERHEAD_TARGET_MS[1]:.0f}): **{'met' if met else 'missed'}**"
        )
    return lines


def _held_pass(figures: dict[str, Any]) -> dict[str, Any] | None:
    """The open-loop pass at the system's sustained rate, if one held."""
    rate = figures.get("sustained_rate_rps")
    return next((p for p in figures.get("open_loop", []) if p["rate_rps"] == rate), None)


def _sustained_rate_line(
    name: str, echolm: dict[str, Any], strong: dict[str, Any], least: float, most_lost: float, bound_s: float
) -> str:
    """The throughput target read as the issue defines throughput: the largest Poisson rate whose p95 stays
    under the bound, with the quality of the answers served at that rate (the first requests of the set)."""
    tried = sorted({p["rate_rps"] for p in echolm.get("open_loop", []) + strong.get("open_loop", [])})
    if not tried:
        return f"- {name}: no Poisson rates were run (`--rates`): no sustained-rate comparison"
    rates = ", ".join(f"{r:g}" for r in tried)
    ours, theirs = _held_pass(echolm), _held_pass(strong)
    if ours is None or theirs is None:
        if ours is None and theirs is None:
            held = "neither EchoLM nor strong-only held any of them"
        else:
            held = f"{'EchoLM' if ours is None else 'strong-only'} held none of them"
        return f"- {name}: sustained rate (p95 ≤ {bound_s:g} s, rates tried {rates} req/s): {held}"
    ratio = ours["rate_rps"] / theirs["rate_rps"]
    if ours["quality"] is None or theirs["quality"] is None:
        return f"- {name}: sustained rate {ratio:.2f}x strong-only; no quality measured at those rates"
    gap = theirs["quality"] - ours["quality"]
    met = ratio >= least and gap <= most_lost
    return (
        f"- {name}: sustained rate (p95 ≤ {bound_s:g} s, rates tried {rates} req/s) EchoLM {ours['rate_rps']:g} vs "
        f"strong-only {theirs['rate_rps']:g} req/s = {ratio:.2f}x (target ≥ {least}x), quality at those rates "
        f"{ours['quality']} vs {theirs['quality']} on the first {ours['requests']} requests ({-gap:+.3f}; target "
        f"within {most_lost}): **{'met' if met else 'missed'}** (open loop)"
    )


def quality_target_lines(name: str, workload: dict[str, Any], strongest: str) -> list[str]:
    """Each quality-target point: the level it held against strong-only, and the offload that bought."""
    lines = []
    for point in workload["sweeps"].get("echolm", []):
        if not point["operating_point"].startswith("quality target "):
            continue
        target = float(point["operating_point"].removeprefix("quality target "))
        judged = workload["metric"] == "win_rate_vs_strong_only"
        held = point["quality"] if judged else point.get("agreement_with_strong_only")
        measure = "win rate against strong-only" if judged else "agreement with strong-only's answers (token F1)"
        offload = 1.0 - point["share_by_tier"].get(strongest, 0.0)
        verdict = "held" if held is not None and held >= target else "not held"
        lines.append(
            f"- {name}: quality target {target:g} ({measure}): {held} — **{verdict}**; offload {offload:.0%}, "
            f"{workload['metric']} {point['quality']}"
        )
    return lines


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def format_report(summary: dict[str, Any], overhead: dict[str, Any] | None, plots: Sequence[str]) -> str:
    lines = [
        "# echolm bench",
        "",
        f"Command: `{summary['command']}`",
        "",
        "Every system served the same requests under the same load (closed loop, the throughput is completed "
        "requests per second). Strong-only and the semantic cache (whose misses go to the strong tier) ran on two "
        "strong servers, small-only on two cheap servers, EchoLM and the difficulty router on one cheap and one "
        "strong server: the same cores for all. "
        f"Sustained rate (open loop, when run): the largest Poisson rate whose p95 latency stayed under "
        f"{summary['p95_bound_s']:g} s.",
        "",
        "## Targets",
        "",
        *target_lines(summary, overhead),
        "",
    ]
    for name, workload in summary["workloads"].items():
        lines += [
            f"## {name}",
            "",
            f"{workload['warm_up']} warm-up requests (answered by the strong tier, admitted), {workload['requests']} "
            f"requests; quality: {workload['metric']}.",
            "",
            "| system | point | req/s | p50 / p95 / p99 s | TTFT p50 s | quality | share by tier | ex/req | "
            "ex tokens/req | overhead p50 / p99 ms | errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for system, points in workload["sweeps"].items():
            for p in points:
                shares = ", ".join(f"{tier} {share:.0%}" for tier, share in p["share_by_tier"].items())
                lines.append(
                    f"| {system} | {p['operating_point']} | {p['throughput_rps']:.3f} | "
                    f"{_cell(p['latency_p50_s'])} / {_cell(p['latency_p95_s'])} / {_cell(p['latency_p99_s'])} | "
                    f"{_cell(p['ttft_p50_s'])} | {_cell(p['quality'])} | {shares} | {p['examples_per_request']} | "
                    f"{p['example_tokens_per_request']} | {_cell(p['overhead_p50_ms'])} / "
                    f"{_cell(p['overhead_p99_ms'])} | {p['errors']} |"
                )
        lines += _open_loop_table(workload)
        lines += [f"- {note}" for note in workload["notes"]]
        lines.append("")
    if overhead:
        from echolm_lab.bench.overhead import format_overhead_markdown

        lines += ["## Overhead against cache size", "", format_overhead_markdown(overhead), ""]
    lines += [f"![{Path(plot).stem}]({Path(plot).name})" for plot in plots]
    return "\n".join(lines) + "\n"


def _open_loop_table(workload: dict[str, Any]) -> list[str]:
    """Every Poisson pass of the workload: the rate it was offered, the latency it kept, what it answered."""
    rows = [
        (system, point["operating_point"], p)
        for system, points in workload["sweeps"].items()
        for point in points
        for p in point.get("open_loop", [])
    ]
    if not rows:
        return []
    lines = [
        "",
        "Poisson passes (the first requests of the set; latency counted from arrival):",
        "",
        "| system | point | offered req/s | served req/s | p50 / p95 s | quality | share by tier | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system, point, p in rows:
        shares = ", ".join(f"{tier} {share:.0%}" for tier, share in p["share_by_tier"].items())
        lines.append(
            f"| {system} | {point} | {p['rate_rps']:g} | {p['throughput_rps']:.3f} | {_cell(p['latency_p50_s'])} / "
            f"{_cell(p['latency_p95_s'])} | {_cell(p.get('quality'))} | {shares} | {p['errors']} |"
        )
    return lines


def quality_bound(quality: float, n: int) -> float:
    """Half-width of a 95% interval for a mean of n scores in [0, 1] with mean `quality`, at its widest (a
    score's variance is at most q(1 - q) on [0, 1], reached by 0/1 scores)."""
    return 1.96 * math.sqrt(max(quality * (1 - quality), 0.0) / max(n, 1))


def plot_quality_vs_throughput(summary: dict[str, Any], path: Path) -> Path:
    """Each operating point of each system, labelled, with a 95% bar on its quality.

    The bar is `quality_bound`: these passes are not paired, so it is a bound on each point alone, not the
    paired interval the answers tables give.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["workloads"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        workload = summary["workloads"][name]
        for system, points in workload["sweeps"].items():
            shown = sorted((p for p in points if p["quality"] is not None), key=lambda p: p["throughput_rps"])
            if not shown:
                continue
            x = [p["throughput_rps"] for p in shown]
            y = [p["quality"] for p in shown]
            bars = [quality_bound(q, p["requests"]) for q, p in zip(y, shown, strict=True)]
            clipped = [
                [min(b, q) for b, q in zip(bars, y, strict=True)],
                [min(b, 1 - q) for b, q in zip(bars, y, strict=True)],
            ]
            axis.errorbar(x, y, yerr=clipped, marker="o", capsize=3, label=f"{system} (n={shown[0]['requests']})")
            for px, py, p in zip(x, y, shown, strict=True):
                axis.annotate(
                    str(p["operating_point"]), (px, py), fontsize=7, xytext=(4, 4), textcoords="offset points"
                )
        _label(axis, f"{name} ({workload['metric']}), 95% bars", "throughput (req/s)", "quality")
    return _save(plt, fig, path)


def plot_latency_cdf(results: Sequence[WorkloadRun], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        seen: set[str] = set()
        for run in result.runs:
            if run.system in seen:
                continue  # the default point of each system
            seen.add(run.system)
            latencies = sorted(a.latency_s for a in run.passes[0].answers if a.error is None)
            if latencies:
                shares = [(i + 1) / len(latencies) for i in range(len(latencies))]
                axis.step(latencies, shares, label=f"{run.system} (n={len(latencies)})")
        _label(axis, result.workload.name, "latency (s)", "share of requests")
    return _save(plt, fig, path)


def _label(axis: Any, title: str, x: str, y: str) -> None:
    axis.set_title(title)
    axis.set_xlabel(x)
    axis.set_ylabel(y)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
