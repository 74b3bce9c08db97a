"""`echolm answers`: fill a workload's answers table (every choice the router has, answered once)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echolm_lab.bench.answers_table import SIZES, TRAIN_SIZES
from echolm_lab.datasets import default_data_dir


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "answers",
        help="answer a workload's requests once with every choice and keep them (the bench's answers table)",
        description=(
            "Answer the warm pool with the strong tier (Arena-Hard: GPT-4-0314's answers, distillation from an "
            "external model), then every request with the strong tier, the cheap tier, and the cheap tier with "
            "the examples the engine's retrieval picks from the pool, at temperature 0, straight from the "
            "config's tier servers (local ones are started). Each answer is appended to TABLE as a JSON line "
            "keyed by the model file's hash, the server's version, the messages and the parameters: a rerun "
            "asks only what is missing, so a killed run resumes. Prints progress; takes hours on 2 cores once."
        ),
    )
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="proxy config (default: %(default)s)")
    parser.add_argument("--workload", required=True, choices=sorted(SIZES), help="built-in workload")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="request sets (default: $ECHOLM_DATA_DIR or the copies shipped with the lab: %(default)s)",
    )
    parser.add_argument(
        "--pool", type=int, help="warm pool size (default: banking77 5000, nq_open 3610, arena_hard 250)"
    )
    parser.add_argument("--requests", type=int, help="requests (default: banking77 1000, nq_open 1000, arena_hard 250)")
    parser.add_argument(
        "--train", type=int,
        help="items answered like requests for a learned router to train on, disjoint from pool and requests "
        "(default: banking77 1000, nq_open 800, arena_hard 0); asked after the requests",
    )  # fmt: skip
    parser.add_argument("--table", type=Path, help="the JSONL table (default: benchmarks/tables/WORKLOAD.jsonl)")
    parser.add_argument(
        "--work", type=Path, default=Path(".echolm/answers"), help="tier servers' logs (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=7, help="split seed (default: %(default)s)")
    parser.add_argument(
        "--verdicts", action="store_true",
        help="after the answers, judge each request's cheap, cheap-with-examples and reused answers against the "
        "strong tier's (the strongest tier as judge, both orders) into TABLE's .verdicts.jsonl: how judged "
        "workloads (arena_hard) are scored; resumable like the answers",
    )  # fmt: skip
    parser.add_argument(
        "--study", action="store_true",
        help="ask nothing: fit the router's offload models (P(reuse / the cheap tier with examples is as good as "
        "the strong tier)), reuse on the warm pool leave-one-out with its threshold, the cheap tier with examples "
        "on the train items; check them on the requests (reliability, Brier, AUC); print the weights as Markdown",
    )  # fmt: skip
    parser.add_argument(
        "--study-with", nargs="*", default=[], choices=sorted(SIZES), metavar="WORKLOAD",
        help="with --study: these workloads' pools (their tables beside TABLE) join the reuse fit",
    )  # fmt: skip
    parser.add_argument(
        "--study-out", type=Path, metavar="DIR",
        help="with --study: also write study.md and reliability.png (each model's reliability on the requests) here; "
        "with --replay-study: replay-WORKLOAD.md; with --examples-study: examples-WORKLOAD-VARIANT.md",
    )  # fmt: skip
    parser.add_argument(
        "--replay-study", action="store_true",
        help="ask the strong tier (two servers) --replay-samples more answers at temperature 0.7 for the warm-pool "
        "items the reuse serves on the requests, then those shown most as examples (kept in TABLE's "
        ".samples.jsonl, resumable), then, where an item's answers differ, ask the strong tier which of them is "
        "correct (kept there too), and print what the upkeep's replay (the medoid of the greedy answer and the "
        "samples), the judge and other rules do to those items' score and to the reused requests' (paired, 95%% "
        "intervals)",
    )  # fmt: skip
    parser.add_argument(
        "--replay-items",
        type=int,
        default=300,
        help="with --replay-study: pool items, most reused first (default: %(default)s)",
    )
    parser.add_argument(
        "--replay-samples", type=int, default=4,
        help="with --replay-study: sampled answers per item beside the greedy one (default: %(default)s, "
        "as `upkeep.samples: 5`)",
    )  # fmt: skip
    parser.add_argument(
        "--examples-study", action="store_true",
        help="ask the cheap tier (two servers) for the train items' answers with a shortened selection of examples "
        "(--examples-k, --examples-max-answer-chars) or another threshold (--examples-threshold) and with the "
        "default one (kept in TABLE's .examples.jsonl, "
        "resumable; the table's own answers taken where the messages are the same), then print the variant's "
        "quality paired with the default's, its prompt tokens and time, over all items and those whose nearest "
        "example is very close",
    )  # fmt: skip
    parser.add_argument(
        "--examples-k", type=int, metavar="K",
        help="with --examples-study: at most K examples a request (retrieval.k)",
    )  # fmt: skip
    parser.add_argument(
        "--examples-max-answer-chars", type=int, metavar="C",
        help="with --examples-study: each example's answer cut at C characters (augmentation.max_answer_chars)",
    )  # fmt: skip
    parser.add_argument(
        "--examples-threshold", type=float, metavar="U",
        help="with --examples-study: the least utility an example needs (retrieval.threshold), e.g. lower than the "
        "config's to show examples to requests whose nearest is further away",
    )  # fmt: skip
    parser.add_argument(
        "--examples-items", choices=("train", "requests"), default="train",
        help="with --examples-study: the items asked (default: %(default)s, where defaults are tuned; requests: the "
        "held-out check of a choice made on the train items, never to tune on)",
    )  # fmt: skip
    parser.add_argument(
        "--report", action="store_true",
        help="ask nothing: print what the table holds (cost per choice, fixed policies' paired quality) as Markdown",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: Any) -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from tqdm import tqdm

    from echolm_lab.bench.answers_table import CHOICES, AnswersTable
    from echolm_lab.bench.table_build import committed_workload, endpoint_of, record_table, table_workload
    from echolm_lab.bench.table_verdicts import VerdictsTable, verdicts_path
    from echolm_lab.local_tiers.assemble import default_model_dir
    from echolm_lab.local_tiers.from_config import specs_for_config
    from echolm_lab.local_tiers.servers import running_tiers
    from echolm_middleware.config import load_settings
    from echolm_middleware.factory import EMBEDDERS, build_engine

    # SIGTERM (`kill`, a CI timeout) unwinds like Ctrl-C, so the tier servers this run started stop with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings, raw = load_settings(args.config)
    pool_n, request_n = SIZES[args.workload]
    source = table_workload(
        args.workload, args.data_dir, pool_size=args.pool or pool_n, request_size=args.requests or request_n,
        train_size=TRAIN_SIZES[args.workload] if args.train is None else args.train, seed=args.seed,
    )  # fmt: skip
    table = AnswersTable(args.table or Path("benchmarks/tables") / f"{args.workload}.jsonl")
    verdicts = VerdictsTable(verdicts_path(table.path))
    if args.report:
        from echolm_lab.bench.table_report import table_report

        embedder = EMBEDDERS[settings.embedder.backend](settings)
        print(
            table_report(
                source, table.answers(), embedder.embed, lookup_seconds(embedder.embed, source), verdicts.records()
            )
        )
        return 0
    # Retrieval as the product does it, on a store of the run's own that holds the pool and nothing else.
    in_memory = settings.model_copy(
        update={
            "store": settings.store.model_copy(update={"backend": "memory"}),
            "state": settings.state.model_copy(update={"backend": "memory"}),
        }
    )
    if args.study:
        others = [
            (committed_workload(name, args.data_dir, seed=args.seed),
             AnswersTable(table.path.parent / f"{name}.jsonl").answers())
            for name in args.study_with
        ]  # fmt: skip
        embed = EMBEDDERS[settings.embedder.backend](settings).embed
        lines, checked = study([(source, table.answers()), *others], embed)
        print("\n".join(lines))
        if args.study_out is not None:
            from echolm_lab.bench.offload_study import plot_reliability

            args.study_out.mkdir(parents=True, exist_ok=True)
            (args.study_out / "study.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
            title = f"Offload models on {args.workload}'s held-out requests"
            plot_reliability(checked, title, args.study_out / "reliability.png")
        return 0
    if args.replay_study:
        return replay_study(args, source, table, settings, raw)
    if args.examples_study:
        return examples_study(args, source, table, settings, raw)
    engine = build_engine(in_memory, raw["model_list"])
    cheap, strong = (endpoint_of(raw, tier.name) for tier in (settings.tiers[0], settings.tiers[-1]))
    total = len(source.pool) + 3 * (len(source.requests) + len(source.train))
    print(
        f"{args.workload}: pool {len(source.pool)}, requests {len(source.requests)}, train {len(source.train)}, "
        f"table {table.path} ({len(table)} answers held)",
        flush=True,
    )
    with (
        running_tiers(specs_for_config(raw, default_model_dir()), args.work),
        tqdm(total=total, desc=f"answers {args.workload}", unit="answer", file=sys.stderr, mininterval=30) as bar,
    ):

        def answered(choice: str) -> None:
            bar.update(1)

        asked = record_table(source, table, engine, strong=strong, cheap=cheap, done=answered)
        held = {choice: sum(1 for a in table.answers() if a.choice == choice) for choice in CHOICES}
        print(f"asked now: {asked}; held: {held}", flush=True)
        if args.verdicts:
            judge_all(source, table, verdicts, strong, EMBEDDERS[settings.embedder.backend](settings).embed)
    return 0


def replay_study(args: Any, source: Any, table: Any, settings: Any, raw: Any) -> int:
    """`--replay-study`: sample what is missing on the strong tier and its replica, then print the effect."""
    from dataclasses import replace

    from tqdm import tqdm

    from echolm_lab.bench.answers_table import AnswersTable
    from echolm_lab.bench.deployments import serving_each
    from echolm_lab.bench.replay_study import (
        ask_planned,
        describe_effect,
        items_to_sample,
        missing_samples,
        planned_picks,
        record_samples,
        replay_effect,
        samples_path,
        served_by_reuse,
    )
    from echolm_lab.bench.table_build import endpoint_of
    from echolm_lab.bench.table_policies import remembering
    from echolm_lab.local_tiers.assemble import default_model_dir
    from echolm_lab.local_tiers.from_config import specs_for_config
    from echolm_middleware.factory import EMBEDDERS

    if source.workload.score is None:
        print(
            f"echolm answers: --replay-study needs a reference metric; {args.workload} is judged pairwise",
            file=sys.stderr,
        )
        return 2
    answers = table.answers()
    embed = remembering(EMBEDDERS[settings.embedder.backend](settings).embed)
    served = served_by_reuse(source, answers, embed)
    chosen = items_to_sample(source, answers, served, args.replay_items)
    samples = AnswersTable(samples_path(table.path))
    strong = endpoint_of(raw, settings.tiers[-1].name)
    # The strong tier's server and a replica of it on the next free port band: both cores sample.
    entry = next(e for e in raw["model_list"] if e.get("model_name") == strong.group)
    specs = specs_for_config({"model_list": [entry]}, default_model_dir())  # none when the tier is remote
    replica_port = specs[0].port + 100 if specs else None
    endpoints = [strong]
    if replica_port is not None:
        specs.append(replace(specs[0], port=replica_port))
        endpoints.append(replace(strong, api_base=strong.api_base.replace(f":{specs[0].port}", f":{replica_port}")))
    per_item, prompts = args.replay_samples, list(chosen)
    to_ask = missing_samples(source, prompts, samples, strong, per_item=per_item)
    # The judge's questions depend on the samples: those known now say whether a server must start when no
    # sample is missing; the rest are planned once the samples are in.
    picks_to_ask = sum(
        pick.key not in samples
        for pick in planned_picks(source, answers, samples.answers(), prompts, strong, per_item=per_item)
    )
    print(
        f"{args.workload}: {len(served)} pool items serve reuse; sampling {len(chosen)} items x {per_item} "
        f"({len(samples)} answers held in {samples.path}, {to_ask} samples to ask)",
        flush=True,
    )
    with serving_each(specs if to_ask or picks_to_ask else [], args.work):
        # The bars count held answers as done, as they are found.
        with tqdm(total=len(chosen) * per_item, desc=f"samples {args.workload}", unit="answer", file=sys.stderr,
                  mininterval=30) as bar:  # fmt: skip
            asked = record_samples(source, prompts, samples, endpoints, per_item=per_item, done=lambda: bar.update(1))
        picks = planned_picks(source, answers, samples.answers(), prompts, strong, per_item=per_item)
        with tqdm(total=len(picks), desc=f"judge {args.workload}", unit="item", file=sys.stderr, mininterval=30) as bar:
            judged = ask_planned(source, picks, samples, endpoints, done=lambda: bar.update(1))
    print(f"samples asked now: {asked}; judge's picks asked now: {judged}; held: {len(samples)}", flush=True)
    effect = replay_effect(source, answers, samples.answers(), chosen, embed, per_item=per_item, reference=strong)
    lines = describe_effect(args.workload, effect, per_item=per_item)
    print("\n".join(lines))
    if args.study_out is not None:
        args.study_out.mkdir(parents=True, exist_ok=True)
        (args.study_out / f"replay-{args.workload}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


def examples_study(args: Any, source: Any, table: Any, settings: Any, raw: Any) -> int:
    """`--examples-study`: the train items' (or requests') cheap answers under the default and the variant
    selection, asked where missing of the cheap tier and a replica of it, then the variant's effect."""
    from dataclasses import replace

    from tqdm import tqdm

    from echolm_lab.bench.answers_table import AnswersTable
    from echolm_lab.bench.deployments import serving_each
    from echolm_lab.bench.examples_study import (
        DEFAULT,
        Variant,
        describe,
        effects,
        examples_path,
        plan,
        record_variant,
    )
    from echolm_lab.bench.table_build import endpoint_of
    from echolm_lab.bench.table_policies import pool_answers
    from echolm_lab.local_tiers.assemble import default_model_dir
    from echolm_lab.local_tiers.from_config import specs_for_config
    from echolm_middleware.factory import EMBEDDERS

    items, label = (source.train, "train items") if args.examples_items == "train" else (source.requests, "requests")
    if source.workload.score is None or not items:
        print(
            f"echolm answers: --examples-study needs a reference metric and {label}; {args.workload} has "
            f"{'no metric' if source.workload.score is None else f'no {label}'}",
            file=sys.stderr,
        )
        return 2
    if args.examples_k is None and args.examples_max_answer_chars is None and args.examples_threshold is None:
        print(
            "echolm answers: --examples-study needs --examples-k, --examples-max-answer-chars or --examples-threshold",
            file=sys.stderr,
        )
        return 2
    parts = []
    if args.examples_k is not None:
        parts.append(f"k={args.examples_k}")
    if args.examples_max_answer_chars is not None:
        parts.append(f"answers cut at {args.examples_max_answer_chars} characters")
    if args.examples_threshold is not None:
        parts.append(f"threshold {args.examples_threshold:g}")
    variant = Variant(
        ", ".join(parts), k=args.examples_k, max_answer_chars=args.examples_max_answer_chars,
        threshold=args.examples_threshold,
    )  # fmt: skip
    cheap = endpoint_of(raw, settings.tiers[0].name)
    strong_group = settings.tiers[-1].name
    pool = pool_answers(source, table.answers())
    embedder = EMBEDDERS[settings.embedder.backend](settings)  # one model load for both selections
    planned = {
        v.name: plan(source, items, pool, v, settings, raw["model_list"], strong_group, embedder=embedder)
        for v in (Variant(DEFAULT), variant)
    }
    study = AnswersTable(examples_path(table.path))
    # The cheap tier's server and a replica of it on the next free port band: both cores answer.
    entry = next(e for e in raw["model_list"] if e.get("model_name") == cheap.group)
    specs = specs_for_config({"model_list": [entry]}, default_model_dir())  # none when the tier is remote
    endpoints = [cheap]
    if specs:
        replica_port = specs[0].port + 100
        specs.append(replace(specs[0], port=replica_port))
        endpoints.append(replace(cheap, api_base=cheap.api_base.replace(f":{specs[0].port}", f":{replica_port}")))
    shown: dict[str, Any] = {}
    with serving_each(specs, args.work):
        for name, items in planned.items():
            chosen = variant if name == variant.name else Variant(DEFAULT)
            with tqdm(total=len(items), desc=f"examples {name}", unit="answer", file=sys.stderr, mininterval=30) as bar:

                def answered() -> None:
                    bar.update(1)

                shown[name], asked = record_variant(source, items, chosen, table, study, endpoints, done=answered)
            print(f"{name}: {asked} answers asked now; held: {len(study)}", flush=True)
    found = effects(shown[DEFAULT], shown[variant.name], source.workload.score)
    lines = describe(args.workload, variant, found, [s.examples for s in shown[DEFAULT]], args.examples_items)
    print("\n".join(lines))
    if args.study_out is not None:
        args.study_out.mkdir(parents=True, exist_ok=True)
        slug = variant.name.replace(", ", "-").replace(" ", "-").replace("=", "")
        held_out = "" if args.examples_items == "train" else f"-{args.examples_items}"
        out = args.study_out / f"examples-{args.workload}-{slug}{held_out}.md"
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


def judge_all(source: Any, table: Any, verdicts: Any, judge: Any, embed: Any) -> None:
    """The verdicts the table lacks: each request's other choices, and its nearest pool answer, against the
    strong tier's answer, judged by the strong tier's server."""
    from tqdm import tqdm

    from echolm_lab.bench.answers_table import REUSE
    from echolm_lab.bench.table_build import ask
    from echolm_lab.bench.table_policies import nearest_in_pool, pool_answers
    from echolm_lab.bench.table_verdicts import JUDGE_MAX_TOKENS, JUDGED_CHOICES, record_verdicts

    answers = table.answers()
    neighbours = nearest_in_pool(embed, pool_answers(source, answers), [item.prompt for item in source.requests])
    reused = {prompt: near.answer for prompt, near in neighbours.items()}
    params = {"temperature": 0.0, "max_tokens": JUDGE_MAX_TOKENS}

    def call(messages: list[dict[str, str]]) -> str:
        return str(ask(judge, messages, params)["answer"])

    total = len(source.requests) * (len(JUDGED_CHOICES) + 1)
    with tqdm(total=total, desc="verdicts", unit="pair", file=sys.stderr, mininterval=30) as bar:

        def judged(choice: str) -> None:
            bar.update(1)

        asked = record_verdicts(source, answers, verdicts, judge, call, extra={REUSE: reused}, done=judged)
    print(f"verdicts asked now: {asked}; held: {len(verdicts)}", flush=True)


def lookup_seconds(embed: Any, source: Any, samples: int = 50) -> float:
    """What serving a cached answer costs us: the median time to embed one request (the lookup's matrix
    product over the pool is microseconds beside it), measured here on the table's own requests."""
    import statistics
    import time

    spent = []
    for item in source.requests[:samples]:
        started = time.perf_counter()
        embed([item.prompt])
        spent.append(time.perf_counter() - started)
    return statistics.median(spent) if spent else 0.0


def study(workloads: Sequence[tuple[Any, Any]], embed: Any) -> tuple[list[str], dict[str, Any]]:
    """Fit the offload models on training data, check them on the first workload's requests: the lines, and
    each model's calibration on the requests (`offload_study.Calibration` by choice).

    `workloads`: (table workload, its answers) pairs. Reuse is fitted on every workload's warm pool,
    leave-one-out, and its threshold chosen there (`table_reuse`); the cheap tier with examples on the
    first workload's train items. Retrieval is exact search over the first workload's pool. The requests
    are never fitted on.
    """
    from echolm_lab.bench.answers_table import CHEAP_WITH_EXAMPLES, REUSE
    from echolm_lab.bench.offload_study import describe, fitted_models, held_out, study_rows
    from echolm_lab.bench.table_policies import pool_answers, remembering
    from echolm_lab.bench.table_reuse import fit_reuse, nearest_candidates, pool_metric, pool_reuse_rows

    embed = remembering(embed)
    reuse_rows = []
    for source, answers in workloads:
        if source.workload.score is not None:
            reuse_rows += pool_reuse_rows(embed, pool_answers(source, answers), pool_metric(source))
    source, answers = workloads[0]
    workload = source.workload
    if workload.score is None:
        return [f"{workload.name} is judged pairwise: the study needs a reference metric"], {}
    prompts = [item.prompt for item in [*source.train, *source.requests]]
    found = nearest_candidates(embed, pool_answers(source, answers), prompts)
    train = study_rows(source.train, answers, lambda prompt: found.get(prompt, []), workload.score)
    checked_on = study_rows(source.requests, answers, lambda prompt: found.get(prompt, []), workload.score)
    weights = fitted_models([row for row in train if CHEAP_WITH_EXAMPLES in row.labels])
    weights.pop(REUSE, None)  # reuse is fitted on the pools below
    reuse = fit_reuse(reuse_rows)
    lines = [f"# Offload model: {', '.join(s.workload.name for s, _ in workloads)}", ""]
    if reuse is not None:
        weights = {REUSE: reuse.weights, **weights}
        lines += [
            f"- reuse: fitted on {reuse.pool_items} pool items (leave-one-out) of "
            + ", ".join(s.workload.name for s, _ in workloads)
            + f"; threshold chosen there: P >= {reuse.threshold:g} (reuses {reuse.pool_reuse_share:.0%} of the pool)",
            f"  `routing.reuse`: weights {[round(w, 3) for w in reuse.weights]}, min_probability {reuse.threshold:g}",
        ]
    if CHEAP_WITH_EXAMPLES in weights:
        lines.append(f"- cheap+examples: fitted on {sum(CHEAP_WITH_EXAMPLES in r.labels for r in train)} train items")
    lines += [f"- checked on {len(checked_on)} {workload.name} requests no fit saw", ""]
    checked = held_out(checked_on, weights)
    return lines + describe(weights, checked), dict(checked)
