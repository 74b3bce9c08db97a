"""What `echolm bench --tables` writes: summary.json, report.md and two plots a reader can read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echolm_lab.bench.offload_study import Calibration
from echolm_lab.bench.report import pass_figures
from echolm_lab.bench.table_bench import LivePass, TableWorkloadRun


def _interval(value: tuple[float, float] | None) -> list[float] | None:
    return None if value is None else [round(value[0], 4), round(value[1], 4)]


def _finite(value: float) -> float | None:
    return None if value == float("inf") else round(value, 3)


def live_figures(live: LivePass) -> dict[str, Any]:
    choices = [c for c, a in zip(live.choices, live.load.answers, strict=True) if a.error is None]
    return {
        "system": live.system,
        "deployment": live.deployment,
        "load_multiple": live.multiple,
        "rate_rps": round(live.load.rate_rps or 0.0, 4),
        **pass_figures(live.load),
        "quality": None if live.quality is None else round(live.quality, 4),
        "difference_to_strong_only": None if live.difference is None else round(live.difference, 4),
        "difference_interval_95": _interval(live.interval),
        "share_by_choice": {c: round(choices.count(c) / len(choices), 3) for c in sorted(set(choices))},
        "cost_per_request_usd": round(live.cost_per_request, 8),
        "ceiling_fixed_split": None if live.ceiling is None else _finite(live.ceiling.fixed_split),
        "ceiling_elastic": None if live.ceiling is None else _finite(live.ceiling.elastic),
        "answers_equal_to_table": {"equal": live.matched_table[0], "compared": live.matched_table[1]},
        "unscored": live.unscored,
        "against_baselines_at_its_strong_share": [
            {
                "policy": r.policy,
                "paired_requests": r.requests,
                "difference": round(r.difference, 4),
                "difference_interval_95": _interval(r.interval),
                "baseline_ceiling_fixed_split": _finite(r.ceiling.fixed_split),
                "baseline_ceiling_elastic": _finite(r.ceiling.elastic),
            }
            for r in live.rivals
        ],
    }


def summarize(
    runs: Sequence[TableWorkloadRun], command: str, p95_bound_s: float, warmup_s: float = 0.0
) -> dict[str, Any]:
    workloads: dict[str, Any] = {}
    for run in runs:
        passes = [live_figures(live) for live in run.passes]
        sustained: dict[str, float | None] = {}
        for series in sorted({_series(p) for p in passes}):
            held = [
                p["rate_rps"]
                for p in passes
                if _series(p) == series and p["latency_p95_s"] is not None and p["latency_p95_s"] <= p95_bound_s
            ]
            sustained[series] = max(held) if held else None
        workloads[run.source.workload.name] = {
            "metric": run.source.workload.metric,
            "pool": len(run.source.pool),
            "pool_teacher": run.source.teacher or "strong tier",
            "requests": len(run.source.requests),
            "strong_only_capacity_rps": round(run.capacity_rps, 4),
            "mean_service_s": {c: round(v, 4) for c, v in run.mean_service_s.items()},
            "policies": [
                {
                    "policy": r.score.policy,
                    "paired_requests": r.score.requests,
                    "quality": round(r.score.quality, 4),
                    "difference_to_strong_only": round(r.score.difference, 4),
                    "difference_interval_95": _interval(r.score.interval),
                    "share_by_choice": {c: round(v, 3) for c, v in sorted(r.score.shares.items())},
                    "cost_per_request_usd": round(r.cost_per_request, 8),
                    "ceiling_fixed_split": _finite(r.ceiling.fixed_split),
                    "ceiling_elastic": _finite(r.ceiling.elastic),
                }
                for r in run.policies
            ],
            "open_loop": passes,
            "sustained_rate_rps": sustained,
            "reuse_model_reliability": _reliability(run.reuse_reliability),
            "notes": list(run.notes),
        }
    return {"command": command, "p95_bound_s": p95_bound_s, "warmup_s": warmup_s, "workloads": workloads}


def _reliability(calibrated: Calibration | None) -> dict[str, Any] | None:
    if calibrated is None:
        return None
    return {
        "requests": calibrated.n,
        "base_rate": round(calibrated.base_rate, 4),
        "brier": round(calibrated.brier, 4),
        "auc": None if calibrated.auc is None else round(calibrated.auc, 4),
        "bins": [{"mean_p": round(p, 4), "observed": round(o, 4), "n": n} for p, o, n in calibrated.bins],
    }


def plot_reuse_reliability(summary: dict[str, Any], path: Path) -> Path | None:
    """A panel per workload: the shipped reuse model's reliability on its requests; None where none has one."""
    from echolm_lab.bench.offload_study import plot_reliability

    checked = {
        f"{name}, the shipped reuse model": Calibration(
            r["requests"],
            r["base_rate"],
            r["brier"],
            r["auc"],
            [(b["mean_p"], b["observed"], b["n"]) for b in r["bins"]],
        )
        for name, data in summary["workloads"].items()
        if (r := data.get("reuse_model_reliability")) is not None
    }
    if not checked:
        return None
    return plot_reliability(
        checked, "P(the nearest cached answer is as good as the strong tier's), on each workload's requests", path
    )


def _series(live: dict[str, Any]) -> str:
    """A system on a deployment, as the report and plots name it (strong-only has one deployment)."""
    return "strong_only" if live["system"] == "strong_only" else f"{live['system']} ({live['deployment']})"


def format_report(summary: dict[str, Any], plots: Sequence[str]) -> str:
    lines = [
        "# EchoLM benchmark on answers tables",
        "",
        f"`{summary['command']}`",
        "",
        "Quality is paired with strong-only on the same requests (95% paired-bootstrap intervals). Ceilings: "
        "the highest arrival rate a policy's choices allow, as a ratio to strong-only on the same two cores "
        "(two strong servers), from the measured service time of each choice; '1 cheap + 1 strong' is the "
        "fixed split, '2 shared slots' elastic co-location.",
        "",
    ]
    for name, data in summary["workloads"].items():
        lines += [
            f"## {name}",
            "",
            f"Pool {data['pool']} (answers by {data['pool_teacher']}), requests {data['requests']}, metric "
            f"{data['metric']}; strong-only capacity {data['strong_only_capacity_rps']:.2f} req/s; mean service "
            + ", ".join(f"{c} {v:.2f} s" for c, v in data["mean_service_s"].items())
            + ".",
            "",
        ]
        if data["policies"]:
            lines += [
                "| policy | n | quality | vs strong-only (95% CI) | shares | cost/request USD "
                "| ceiling 1+1 | ceiling 2 slots |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for p in data["policies"]:
                low, high = p["difference_interval_95"]
                shares = ", ".join(f"{c} {v:.0%}" for c, v in p["share_by_choice"].items())
                lines.append(
                    f"| {p['policy']} | {p['paired_requests']} | {p['quality']:.3f} "
                    f"| {p['difference_to_strong_only']:+.3f} ({low:+.3f} to {high:+.3f}) | {shares} "
                    f"| {p['cost_per_request_usd']:.2e} | {_x(p['ceiling_fixed_split'])} | {_x(p['ceiling_elastic'])} |"
                )
            lines.append("")
        if data["open_loop"]:
            lines += [
                "| system | load | rate req/s | n (timed) | p50 / p95 s | throughput req/s | its ceiling | quality "
                "| vs strong-only (95% CI) | shares | = table |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for p in data["open_loop"]:
                ci = p["difference_interval_95"]
                versus = "-" if ci is None else f"{p['difference_to_strong_only']:+.3f} ({ci[0]:+.3f} to {ci[1]:+.3f})"
                shares = ", ".join(f"{c} {v:.0%}" for c, v in p["share_by_choice"].items())
                equal = p["answers_equal_to_table"]
                lines.append(
                    f"| {_series(p)} | {p['load_multiple']:g}x | {p['rate_rps']:.2f} "
                    f"| {p['requests']} ({p['requests_timed']}) | {_s(p['latency_p50_s'])} / {_s(p['latency_p95_s'])} "
                    f"| {p['throughput_rps']:.2f} | {_ceiling_of(p, data['strong_only_capacity_rps'])} "
                    f"| {_q(p['quality'])} | {versus} | {shares} "
                    f"| {equal['equal']}/{equal['compared']} |"
                )
            lines += _against_baselines(data)
            sustained = data["sustained_rate_rps"]
            lines += [
                "",
                f"Sustained rate (p95 <= {summary['p95_bound_s']:g} s): "
                + ", ".join(f"{s} {_q(v)} req/s" for s, v in sustained.items())
                + ".",
                "",
            ]
        reliability = data.get("reuse_model_reliability")
        if reliability is not None:
            auc = "-" if reliability["auc"] is None else f"{reliability['auc']:.3f}"
            lines += [
                f"The shipped reuse model on these {reliability['requests']} requests: base rate (the nearest "
                f"cached answer as good as the strong tier's) {reliability['base_rate']:.3f}, Brier "
                f"{reliability['brier']:.3f}, AUC {auc}; reliability per decile of P (mean P -> observed, n): "
                + ", ".join(f"{b['mean_p']:.2f} -> {b['observed']:.2f} ({b['n']})" for b in reliability["bins"])
                + ".",
                "",
            ]
        lines += [f"Note: {note}" for note in data["notes"]]
        lines.append("")
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def _against_baselines(data: dict[str, Any]) -> list[str]:
    """Each EchoLM pass against the baselines set to its own share of strong calls, paired per request."""
    rows = [(p, r) for p in data["open_loop"] for r in p.get("against_baselines_at_its_strong_share", [])]
    if not rows:
        return []
    capacity = data["strong_only_capacity_rps"]
    lines = [
        "",
        "Each EchoLM pass against the baselines set to its own share of strong calls (off the table, paired on "
        "the pass's requests; the baseline's ceiling on the pass's deployment in req/s):",
        "",
        "| system | load | baseline | n | pass minus baseline (95% CI) | baseline's ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for p, r in rows:
        low, high = r["difference_interval_95"]
        ratio = r["baseline_ceiling_elastic"] if p["deployment"] == "elastic" else r["baseline_ceiling_fixed_split"]
        at = "unbounded" if ratio is None else f"{ratio * capacity:.2f}"
        lines.append(
            f"| {_series(p)} | {p['load_multiple']:g}x | {r['policy']} | {r['paired_requests']} "
            f"| {r['difference']:+.3f} ({low:+.3f} to {high:+.3f}) | {at} |"
        )
    return lines


def _ceiling_of(live: dict[str, Any], capacity_rps: float) -> str:
    """The most a pass's mix of choices allows on its deployment, in req/s (strong-only: its capacity)."""
    if live["system"] == "strong_only":
        return f"{capacity_rps:.2f}"
    ratio = live["ceiling_elastic"] if live["deployment"] == "elastic" else live["ceiling_fixed_split"]
    return "-" if ratio is None else f"{ratio * capacity_rps:.2f}"


def _x(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:.2f}x"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _q(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot_quality_vs_offload(summary: dict[str, Any], path: Path) -> Path:
    """Per workload: each policy's paired quality difference (95% CI bars) against its share not answered
    by the strong tier, one legend entry per point (labels beside points overlap where policies agree);
    EchoLM's live passes as squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [(n, d) for n, d in summary["workloads"].items() if d["policies"]]
    fig, axes = plt.subplots(1, max(1, len(workloads)), figsize=(11 * max(1, len(workloads)), 5.5), squeeze=False)
    markers = "ovD^<>phP*Xd"
    for ax, (name, data) in zip(axes[0], workloads, strict=False):
        points = [(p["policy"], p, False) for p in data["policies"]]
        points += [
            (f"{p['system']} live, {p['deployment']}, {p['load_multiple']:g}x capacity (n = {p['requests']})", p, True)
            for p in data["open_loop"]
            if p["system"] != "strong_only"
        ]
        for index, (label, p, live) in enumerate(points):
            ci = p["difference_interval_95"]
            if ci is None:
                continue
            offload = 1 - p["share_by_choice"].get("strong", 0.0)
            y = p["difference_to_strong_only"]
            ax.errorbar(
                offload, y, yerr=[[y - ci[0]], [ci[1] - y]], fmt="s" if live else markers[index % len(markers)],
                capsize=3, color="tab:red" if live else f"C{index % 10}", label=label, alpha=0.85,
            )  # fmt: skip
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhline(-0.03, color="grey", lw=0.8, ls="--", label="non-inferiority margin (-3 points)")
        n = data["policies"][0]["paired_requests"]
        ax.set_title(f"{name}: quality vs offload\n(policies: n = {n} paired requests)")
        ax.set_xlabel("share of requests not answered by the strong tier")
        ax.set_ylabel(f"{data['metric']} minus strong-only's (95% CI)")
        ax.set_xlim(-0.05, 1.05)
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency_vs_load(summary: dict[str, Any], path: Path) -> Path:
    """Per workload: p95 latency against offered load for strong-only and EchoLM, the bound drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [(n, d) for n, d in summary["workloads"].items() if d["open_loop"]]
    fig, axes = plt.subplots(1, max(1, len(workloads)), figsize=(6 * max(1, len(workloads)), 4.5), squeeze=False)
    for ax, (name, data) in zip(axes[0], workloads, strict=False):
        for index, series in enumerate(sorted({_series(p) for p in data["open_loop"]})):
            mine = sorted((p for p in data["open_loop"] if _series(p) == series), key=lambda p: p["rate_rps"])
            xs = [p["rate_rps"] for p in mine if p["latency_p95_s"] is not None]
            ys = [p["latency_p95_s"] for p in mine if p["latency_p95_s"] is not None]
            n = sum(p["requests_timed"] for p in mine)
            ax.plot(xs, ys, "os^D"[index % 4] + "-", label=f"{series} (n = {n} timed requests)")
        ax.axhline(
            summary["p95_bound_s"], color="grey", ls="--", lw=0.8, label=f"p95 bound {summary['p95_bound_s']:g} s"
        )
        ax.axvline(data["strong_only_capacity_rps"], color="grey", ls=":", lw=0.8, label="strong-only capacity")
        ax.set_title(f"{name}: p95 latency vs offered load")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("Poisson arrival rate (req/s)")
        ax.set_ylabel(f"p95 latency (s), first {summary.get('warmup_s', 0):g} s of each pass untimed")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
