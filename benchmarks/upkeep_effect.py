"""What one upkeep pass (replay + coverage) buys on a cache first answered by the cheap tier.

    .venv/bin/python benchmarks/upkeep_effect.py [--warm 40] [--traffic 40] [--held-out 40]

Per workload (NQ-open, Banking77), on the local tiers from config.yaml, real MiniLM and real Chroma:
1. warm: the cheap tier answers `--warm` questions; its answers are admitted as examples;
2. traffic: `--traffic` requests go through the engine and the chosen tier and are recorded (this is
   what gives examples their replay gain and leaves misses for coverage);
3. before: `--held-out` requests (each with a neighbour in the warm pool) are routed and answered,
   and never recorded, through a second engine over the same store with its own decision log;
4. one upkeep pass;
5. after: the same held-out requests again.
Reports the offload share, the cheap tier's quality and overall quality before and after, and the
pass's strong-tier tokens, in benchmarks/results/upkeep-effect/.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from echolm_lab.datasets import QARecord, default_nq_path, load_records, split_with_neighbours
from echolm_lab.local_tiers.assemble import default_model_dir
from echolm_lab.local_tiers.from_config import specs_for_config
from echolm_lab.local_tiers.servers import running_tiers
from echolm_middleware.config import Settings, load_settings, read_config_file
from echolm_middleware.core.engine import Engine
from echolm_middleware.core.types import ChatRequest, Outcome
from echolm_middleware.factory import build_engine, build_state, build_upkeep
from echolm_middleware.quality_target.answer_match import exact_match

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TENANT = "bench"


def banking77() -> tuple[list[QARecord], str, Callable[[str, QARecord], float]]:
    with (DATA / "banking77" / "train.csv").open(newline="", encoding="utf-8") as handle:
        records = [QARecord(row["text"].strip(), (row["category"],)) for row in csv.DictReader(handle)]
    intents = json.loads((DATA / "banking77" / "categories.json").read_text())
    system = (
        "Classify the online-banking customer query into exactly one intent. Answer with the intent name "
        "only, exactly as written. Intents: " + ", ".join(intents)
    )

    def score(answer: str, record: QARecord) -> float:
        normalized = answer.strip().strip("`'\".").lower().replace(" ", "_")
        return float(normalized == record.references[0])

    return records, system, score


def nq_open() -> tuple[list[QARecord], str, Callable[[str, QARecord], float]]:
    def score(answer: str, record: QARecord) -> float:
        return float(exact_match(answer, record.references))

    return load_records(default_nq_path()), "Answer the question with a short phrase only, no explanation.", score


WORKLOADS = {"nq_open": nq_open, "banking77": banking77}


def ask(router: Any, tier: str, messages: list[dict[str, Any]], max_tokens: int) -> tuple[str, str | None]:
    response = router.completion(model=tier, messages=messages, max_tokens=max_tokens, temperature=0)
    choice = response.choices[0]
    return str(choice.message.content or ""), choice.finish_reason


def serve(
    engine: Engine, router: Any, records: Sequence[QARecord], system: str, *, record: bool, label: str,
    score: Callable[[str, QARecord], float], max_tokens: int, requested: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Route and answer each request; record outcomes only when asked. Returns the pass's figures.

    `requested` names the tier the client asks for (the strongest by default). Naming the cheap tier
    pins every request there, with whatever examples the engine selects: that isolates what better
    examples do for the cheap tier from how many requests the router sends it.
    """
    tiers: list[str] = []
    scores: list[float] = []
    with_examples = 0
    for item in tqdm(records, desc=label, unit="req", file=sys.stderr):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": item.prompt}]
        model = requested or engine.strongest
        prepared = engine.prepare(ChatRequest(tenant=TENANT, model=model, messages=messages))
        answer, finish = ask(router, prepared.tier, prepared.messages, max_tokens)
        if record:
            engine.record(Outcome(prepared.decision.request_id, prepared.tier, answer, finish))
        else:
            engine.release(prepared.decision.request_id)
        tiers.append(prepared.tier)
        scores.append(score(answer, item))
        with_examples += bool(prepared.decision.examples)
    cheap = [s for t, s in zip(tiers, scores, strict=True) if t != engine.strongest]
    return {
        "requests": len(records),
        "offload_share": round(len(cheap) / len(records), 3),
        "cheap_quality": round(sum(cheap) / len(cheap), 3) if cheap else None,
        "quality": round(sum(scores) / len(scores), 3),
        "with_examples": round(with_examples / len(records), 3),
    }


def run_workload(name: str, args: argparse.Namespace, settings: Settings, model_list: list[Any]) -> dict[str, Any]:
    from litellm.router import Router

    records, system, score = WORKLOADS[name]()
    store_dir = Path(tempfile.mkdtemp(prefix=f"echolm-upkeep-{name}-"))
    settings = settings.stored_under(store_dir)
    state = build_state(settings)  # the engine's decisions are what the pass's coverage reads
    engine = build_engine(settings, model_list, state=state)
    engine.warm_up()
    evaluation = build_engine(
        settings.model_copy(update={"state": settings.state.model_copy(update={"backend": "memory"})}),
        model_list,
        embedder=engine.embedder,
        store=engine.store,
        tokens=engine.tokens,
    )
    vectors = engine.embedder.embed([r.prompt for r in records])
    warm, rest, paired = split_with_neighbours(
        records, args.warm, args.traffic + args.held_out, args.seed, share=1.0, vectors=vectors, min_similarity=0.8
    )
    traffic, held_out = rest[: args.traffic], rest[args.traffic :]
    router = Router(model_list=model_list, num_retries=0)
    cheap = settings.tiers[0].name
    for item in tqdm(warm, desc=f"{name} warm (cheap tier)", unit="req", file=sys.stderr):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": item.prompt}]
        answer, finish = ask(router, cheap, messages, args.max_tokens)
        if finish in (None, "stop") and answer.strip():
            engine.admit(TENANT, item.prompt, answer.strip(), cheap, instructions=system)
    common = {"score": score, "max_tokens": args.max_tokens}
    serve(engine, router, traffic, system, record=True, label=f"{name} traffic", **common)
    before = serve(evaluation, router, held_out, system, record=False, label=f"{name} before", **common)
    pinned = {"record": False, "requested": cheap, **common}
    cheap_before = serve(evaluation, router, held_out, system, label=f"{name} before, cheap tier", **pinned)
    upkeep = build_upkeep(settings, model_list, engine=engine, state=state)
    report = upkeep.run_pass([TENANT])
    after = serve(evaluation, router, held_out, system, record=False, label=f"{name} after", **common)
    cheap_after = serve(evaluation, router, held_out, system, label=f"{name} after, cheap tier", **pinned)
    outcomes: dict[str, int] = {}
    for step in report.steps:
        outcomes[f"{step.kind}: {step.outcome}"] = outcomes.get(f"{step.kind}: {step.outcome}", 0) + 1
    return {
        "warm": len(warm),
        "traffic": len(traffic),
        "held_out": len(held_out),
        "requests_with_a_warm_neighbour": paired,
        "before": before,
        "after": after,
        "cheap_tier_pinned": {"before": cheap_before, "after": cheap_after},
        "pass": {
            "steps": outcomes,
            "strong_tier_tokens": report.tokens_spent,
            "budget_tokens": report.budget_tokens,
            "evicted": sum(report.evicted.values()) + sum(report.expired.values()),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=int, default=40, help="questions the cheap tier answers into the cache")
    parser.add_argument("--traffic", type=int, default=40, help="recorded requests before the pass")
    parser.add_argument("--held-out", type=int, default=40, help="requests measured before and after the pass")
    parser.add_argument("--max-tokens", type=int, default=32, help="answer length asked of the tiers")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "upkeep-effect")
    args = parser.parse_args()

    config = ROOT / "config.yaml"
    settings, raw = load_settings(config)
    model_list = raw["model_list"]
    results: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "workloads": {}}
    with running_tiers(specs_for_config(read_config_file(config), default_model_dir()), ROOT / ".echolm" / "run"):
        for name in args.workloads:
            results["workloads"][name] = run_workload(name, args, settings, model_list)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "report.md").write_text(format_report(results))
    print(format_report(results))


def format_report(results: dict[str, Any]) -> str:
    lines = [
        "# One upkeep pass over a cache first answered by the cheap tier",
        "",
        f"Command: `{results['command']}` (local tiers from config.yaml, MiniLM, embedded Chroma).",
        "",
        "| workload | held-out | offload before → after | cheap-tier quality before → after "
        "| overall quality before → after | pass: strong-tier tokens | pass steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, w in results["workloads"].items():
        b, a, p = w["before"], w["after"], w["pass"]
        steps = ", ".join(f"{k} {v}" for k, v in sorted(p["steps"].items())) or "none"
        lines.append(
            f"| {name} | {w['held_out']} | {b['offload_share']:.0%} → {a['offload_share']:.0%} | "
            f"{b['cheap_quality']} → {a['cheap_quality']} | {b['quality']} → {a['quality']} | "
            f"{p['strong_tier_tokens']} of {p['budget_tokens']} | {steps} |"
        )
    lines += [
        "",
        "Every held-out request pinned to the cheap tier (the client names it), with the examples the engine",
        "selects: what the pass did to the examples themselves, apart from the router's share.",
        "",
        "| workload | held-out | with examples before → after | cheap-tier quality before → after |",
        "|---|---|---|---|",
    ]
    for name, w in results["workloads"].items():
        b, a = w["cheap_tier_pinned"]["before"], w["cheap_tier_pinned"]["after"]
        lines.append(
            f"| {name} | {w['held_out']} | {b['with_examples']:.0%} → {a['with_examples']:.0%} | "
            f"{b['quality']} → {a['quality']} |"
        )
    lines += [
        "",
        "Quality: exact match against the gold answers (NQ-open), intent accuracy (Banking77). Cheap-tier",
        "quality is over the held-out requests the cheap tier answered (none: the router sent none there).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
