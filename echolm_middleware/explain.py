"""Human-readable account of one kept decision: what was found, how each tier scored, and why."""

from __future__ import annotations

import datetime as dt

from echolm_middleware.core.offload_model import FEATURES
from echolm_middleware.core.types import Decision


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]


def _why(decision: Decision) -> str:
    if decision.action == "reuse":
        return f"reuse: {decision.reason}; no model was called"
    if decision.action != "route":
        return f"{decision.action.replace('_', ' ')}: {decision.reason}; the request went to the model it named"
    ranked = sorted(decision.scores, key=lambda s: s.score, reverse=True)
    chosen = ranked[0]
    if len(ranked) == 1 and decision.left_out_failing:
        return f"{chosen.tier} is the only tier left: {', '.join(decision.left_out_failing)} had just failed"
    if len(ranked) == 1:
        return f"{chosen.tier} is the only tier no dearer than {decision.requested_model!r}"
    runner = ranked[1]
    parts = [f"{chosen.tier} scored {chosen.score:.3f} against {runner.tier}'s {runner.score:.3f}"]
    if runner.load_penalty > 0 and runner.load_signal == "delay":
        parts.append(f"{runner.tier} was charged {runner.load:.2f} s of delay (the wait behind the requests ahead, "
                     f"and its answer's time beyond the {runner.capacity:g} s latency target), costing it "
                     f"{runner.load_penalty:.3f}")  # fmt: skip
    elif runner.load_penalty > 0:
        parts.append(f"{runner.tier} was over capacity (load {runner.load:.2f} > {runner.capacity:g}), costing it "
                     f"{runner.load_penalty:.3f}")  # fmt: skip
    for capped in (s for s in (chosen, runner) if s.load_penalty_capped):
        parts.append(f"{capped.tier}'s load charge was capped at {capped.load_penalty:.3f}, the most load may "
                     "cost a tier (routing.max_load_penalty)")  # fmt: skip
    if decision.examples:
        parts.append(f"{len(decision.examples)} example(s) put the request in context bucket "
                     f"{decision.bucket!r}, raising the estimate for cheaper tiers")  # fmt: skip
    elif decision.bucket == "none":
        parts.append("no example cleared the utility threshold")
    return "; ".join(parts)


def _threshold_line(decision: Decision) -> str:
    """The tenant's utility threshold, and the arm of the band explored below it the request fell in."""
    if decision.threshold is None:
        return ""
    line = f"utility threshold: {decision.threshold:.2f} for this tenant"
    if decision.threshold_band is None:
        return line
    band = f"[{decision.threshold_band:.2f}, {decision.threshold:.2f})"
    trial = "the trial sends both arms to the cheapest tier; retrieval.dynamic.explore_share"
    if decision.threshold_arm == "shown":
        return line + f"; its best example lay in the band below, {band}, and was shown to explore it ({trial})"
    return line + f"; its best example lay in the band below, {band}, and was not shown: the comparison arm ({trial})"


def format_decision(decision: Decision, recorded_by: str | None = None) -> str:
    """The `echolm explain` report."""
    when = dt.datetime.fromtimestamp(decision.created_at, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"request {decision.request_id}  tenant {decision.tenant}  {when}",
        f"named model {decision.requested_model!r} -> {decision.tier!r} ({decision.action})",
    ]
    if decision.query:
        lines.append(f"query: {decision.query[:200]!r}")
    if decision.reuse_probability is not None:
        features = ", ".join(
            f"{name} {value:.2f}" for name, value in zip(FEATURES, decision.reuse_features, strict=False)
        )
        served = f"served example {decision.reused_example}" if decision.action == "reuse" else "not reused"
        lines.append(
            f"reuse: P(nearest cached answer as good as the strongest's) {decision.reuse_probability:.2f}, "
            f"no model call (time: our overhead only; prompt price $0), {served} [{features}]"
        )
    if decision.action == "route" or decision.reuse_stands_in_for:  # the tiers were scored
        best = "n/a" if decision.best_similarity is None else f"{decision.best_similarity:.3f}"
        lines.append(
            f"retrieval: {decision.candidates_considered} candidates, best similarity {best}, "
            f"{len(decision.examples)} example(s) kept ({decision.augmentation}, {decision.example_tokens} tokens), "
            f"overhead {decision.overhead_ms:.1f} ms"
        )
        for index, ex in enumerate(decision.examples, 1):
            features = ", ".join(f"{k} {v:.2f}" for k, v in ex.features.items())
            lines.append(f"  example {index}: similarity {ex.similarity:.3f} utility {ex.utility:.3f} "
                         f"[{features}] {ex.prompt[:80]!r}")  # fmt: skip
        lines.append(f"context bucket: {decision.bucket}")
        threshold = _threshold_line(decision)
        if threshold:
            lines.append(threshold)
        if decision.left_out_failing:
            lines.append(
                f"left out: {', '.join(decision.left_out_failing)} (calls to it had just failed; it is tried "
                "again after routing.failing_tier_cooldown_s, doubled on each failed try)"
            )
        delay = any(s.load_signal == "delay" for s in decision.scores)
        load_column = "delay/target s" if delay else "load/cap"
        rows = [["tier", "quality", "alpha/beta", "cost", load_column, "-cost", "-load", "score", "time s", "prompt $"]]
        for s in decision.scores:
            rows.append([
                s.tier + (" *" if s.tier in (decision.tier, decision.reuse_stands_in_for) else ""),
                f"{s.quality:.3f}", f"{s.alpha:.1f}/{s.beta:.1f}", f"{s.cost:.3f}",
                f"{s.load:.2f}/{s.capacity:g}", f"{s.cost_penalty:.3f}", f"{s.load_penalty:.3f}", f"{s.score:.3f}",
                "-" if s.expected_s is None else f"{s.expected_s:.2f}",
                "-" if s.prompt_usd is None else f"{s.prompt_usd:.2e}",
            ])  # fmt: skip
        charged = (
            "delay: the seconds charged, the wait in full and the answer's own time beyond the target; "
            if delay
            else ""
        )
        lines.append(
            f"tier scores (score = quality - cost term - load bias; {charged}time: expected seconds to the "
            "answer, the requests ahead at the tier's measured latency, then its own from the prompt tokens it "
            "would read; prompt $: the prompt it would get, examples included, at its input price):"
        )
        lines += _table(rows)
    lines.append(f"why: {_why(decision)}")
    lines.append(f"outcome: {'recorded, served by ' + recorded_by if recorded_by else 'not recorded (yet)'}")
    return "\n".join(lines)
