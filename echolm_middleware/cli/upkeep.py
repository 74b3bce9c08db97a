"""`echolm upkeep` (alias `echolm replay`, its old name): run one upkeep pass now (replay, coverage,
eviction) and print what it did."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from echolm_middleware.errors import EchoLMError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "upkeep",
        aliases=["replay"],  # the command's old name: scripts written for it keep working
        help="run one upkeep pass now: replay, coverage of misses, eviction",
        description=(
            "Run one upkeep pass now. Re-ask the strongest tier the cached requests that pay back most "
            "(highest replay gain G, within the budget, each at most upkeep.max_replays times), answer "
            "clusters of recent requests that found no useful example, then evict expired entries and what "
            "the entry/byte budget cannot hold (0/1 knapsack on decayed offload value). A pass that was "
            "killed is finished first. Calls the tiers directly from the config's model_list, not through "
            "a proxy. Stops with exit 3 if another pass is running on the same state database. `echolm "
            "replay` is the same command under its old name."
        ),
    )
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="proxy config (default: %(default)s)")
    parser.add_argument(
        "--tenant", action="append", dest="tenants", metavar="TENANT", help="only this tenant (repeatable)"
    )
    parser.add_argument("--budget-tokens", type=int, help="strong-tier tokens this pass may spend (default: config)")
    parser.add_argument("--budget-usd", type=float, help="money this pass may spend (default: config)")
    parser.add_argument("--samples", type=int, help="strong-tier answers per request, best kept (default: config)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; call no tier, change nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    chosen = {"budget_tokens": args.budget_tokens, "budget_usd": args.budget_usd, "samples": args.samples}
    return {key: value for key, value in chosen.items() if value is not None}


class _Bar:
    def __init__(self) -> None:
        self._bar: Any = None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc="upkeep", unit="step", file=sys.stderr)

    def advance(self, step: Any) -> None:
        self._bar.set_postfix_str(f"{step.kind}: {step.outcome}")
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run(args: argparse.Namespace) -> int:
    from echolm_middleware.config import load_settings
    from echolm_middleware.factory import build_upkeep
    from echolm_middleware.upkeep import Busy, process_holder, run_now

    try:
        settings, raw = load_settings(args.config)
        overrides = _overrides(args)
        if overrides:
            settings = settings.model_copy(update={"upkeep": settings.upkeep.model_copy(update=overrides)})
        upkeep = build_upkeep(settings, raw.get("model_list") or [])
        if args.dry_run:
            steps = upkeep.plan(args.tenants)
            print(json.dumps(steps, indent=2) if args.json else format_plan(steps))
            return 0
        bar = _Bar()
        try:
            report = run_now(upkeep, process_holder(), tenants=args.tenants, progress=bar)
        finally:
            bar.close()
        print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
        return 0
    except Busy as exc:
        print(f"echolm: {exc}", file=sys.stderr)
        return 3
    except EchoLMError as exc:
        print(f"echolm: {exc}", file=sys.stderr)
        return 2


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_plan(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return "nothing to replay or cover now"
    lines = [f"{len(steps)} step(s), {sum(int(s['estimate']) for s in steps)} tokens at most:"]
    for s in steps:
        gain, estimate = float(s["gain_before"]), s["estimate"]
        lines.append(f"  {s['kind']:<8} {s['tenant']:<20} G {gain:.3f}  ≤{estimate} tokens  {_short(s['prompt'])!r}")
    return "\n".join(lines)


def format_report(report: Any) -> str:
    resumed = " (finished an interrupted pass)" if report.resumed else ""
    budget = f"{report.budget_tokens} tokens" + (f", ${report.budget_usd}" if report.budget_usd is not None else "")
    lines = [
        f"upkeep pass {report.run_id}{resumed}: {len(report.steps)} step(s), "
        f"{report.tokens_spent} strong-tier tokens (${report.usd_spent:.4f}) of a budget of {budget}"
    ]
    for step in report.steps:
        extra = f" cluster of {step.cluster_size}" if step.kind == "coverage" else ""
        lines.append(
            f"  {step.kind:<8} {step.outcome:<28} G {step.gain_before:.3f} -> {step.gain_after:.3f}  "
            f"{step.tokens:>5} tokens{extra}  {_short(step.prompt)!r}"
        )
    for tenant in sorted(set(report.evicted) | set(report.expired)):
        lines.append(
            f"  evicted  {tenant}: {report.expired.get(tenant, 0)} expired, {report.evicted.get(tenant, 0)} over budget"
        )
    return "\n".join(lines)
