"""`echolm bench`: EchoLM against strong-only, small-only, a semantic cache and a difficulty router."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from echolm_lab.datasets import default_data_dir
from echolm_middleware.errors import EchoLMError

DEFAULT_WORKLOADS = ["nq_open", "banking77", "arena_hard"]


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _run_and_per_workload(values: list[str], cast: Any, flag: str) -> tuple[list[Any], dict[str, list[Any]]]:
    """`1.0 1.5 banking77=1.0,1.3,1.5`: the run's values, and each workload's own in place of them."""
    default: list[Any] = []
    by_workload: dict[str, list[Any]] = {}
    for value in values:
        workload, _, listed = value.rpartition("=")
        try:
            parsed = [cast(part) for part in listed.split(",")]
        except ValueError:
            raise EchoLMError(f"{flag}: {value!r} is neither a value nor WORKLOAD=VALUE[,VALUE...]") from None
        if workload:
            by_workload[workload] = parsed
        elif len(parsed) == 1:
            default += parsed
        else:
            raise EchoLMError(f"{flag}: {value!r}: a list of values needs a workload, WORKLOAD={listed}")
    return default, by_workload


def _pass_plan(args: argparse.Namespace) -> dict[str, Any]:
    """--load-multiples and --pass-requests as TableBenchOptions' fields, or EchoLMError saying what is wrong."""
    multiples, multiples_by_workload = _run_and_per_workload(args.load_multiples, float, "--load-multiples")
    sizes, sizes_by_workload = _run_and_per_workload(args.pass_requests, int, "--pass-requests")
    if len(sizes) > 1 or any(len(n) > 1 for n in sizes_by_workload.values()):
        raise EchoLMError("--pass-requests takes one size for the run and one per workload")
    if unknown := sorted((set(multiples_by_workload) | set(sizes_by_workload)) - set(args.workloads)):
        raise EchoLMError(f"a value for {', '.join(unknown)}, which this run does not serve (--workloads)")
    if any(x <= 0 for x in multiples + [x for xs in multiples_by_workload.values() for x in xs]):
        raise EchoLMError("--load-multiples must be above 0")
    if any(n <= 0 for n in sizes + [n for ns in sizes_by_workload.values() for n in ns]):
        raise EchoLMError("--pass-requests must be above 0")
    plan: dict[str, Any] = {
        "load_multiples_by_workload": multiples_by_workload,
        "pass_requests_by_workload": {workload: n[0] for workload, n in sizes_by_workload.items()},
    }
    # Only per-workload values given: the run's own stay TableBenchOptions' defaults.
    if multiples:
        plan["load_multiples"] = multiples
    if sizes:
        plan["pass_requests"] = sizes[0]
    return plan


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="compare EchoLM with strong-only, small-only, a semantic cache and a difficulty router",
        description=(
            "Serve the same requests with every system through a LiteLLM proxy on the config's tiers "
            "(local tiers are started; strong-only and small-only get two servers of their tier, the same "
            "cores as the others), score the answers by the workload's metric or a pairwise judge, measure "
            "our overhead against cache size, and write summary.json, report.md and PNG plots to "
            "RESULTS/RUN. Workloads: nq_open, banking77, arena_hard, or a JSONL/CSV file with `prompt` "
            "and optional `reference`."
        ),
    )
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="proxy config (default: %(default)s)")
    parser.add_argument(
        "--workloads", nargs="*", default=DEFAULT_WORKLOADS, metavar="NAME_OR_FILE",
        help="built-in names or request files (default: %(default)s; none: overhead only)",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="request sets (default: $ECHOLM_DATA_DIR or the copies shipped with the lab: %(default)s)",
    )
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="(default: %(default)s)")
    parser.add_argument("--run", help="name of this run's folder (default: bench-<UTC time>)")
    parser.add_argument(
        "--work", type=Path, default=Path(".echolm/bench"), help="stores, logs of the run (default: %(default)s)"
    )
    parser.add_argument("--warm", type=int, help="warm-up pool size for every workload (default: per workload)")
    parser.add_argument("--requests", type=int, help="request set size for every workload (default: per workload)")
    parser.add_argument("--seed", type=int, default=7, help="split and arrival seed (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=2, help="closed-loop concurrent clients (default: 2)")
    parser.add_argument(
        "--rates", type=float, nargs="*", default=[], metavar="RPS",
        help="Poisson arrival rates (req/s) also run for strong-only and EchoLM's default point, on reference "
        "workloads (default: none)",
    )  # fmt: skip
    parser.add_argument(
        "--rate-requests", type=int, default=30, metavar="N",
        help="requests each Poisson pass sends: the first N of the request set (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=float, default=60.0, metavar="SECONDS",
        help="a Poisson pass's first seconds are served but not timed: queues start empty (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--p95-bound", type=float, default=10.0, help="latency bound for a sustained rate (s)")
    parser.add_argument(
        "--semantic-thresholds", type=_share, nargs="+", default=[0.9, 0.8], metavar="T",
        help="semantic cache points: least similarity for a cached answer (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--difficulty-strong-shares", type=_share, nargs="+", default=[0.5, 0.25], metavar="S",
        help="difficulty router points: share of requests sent to the strong tier (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--cost-weights", type=float, nargs="*", default=[], metavar="W",
        help="EchoLM operating points (routing.cost_weight); default: the config's value only",
    )  # fmt: skip
    parser.add_argument(
        "--quality-targets", type=_share, nargs="*", default=[], metavar="Q",
        help="EchoLM points holding routing.quality_target Q, agreement (token F1) with the strong tier's "
        "answers, on workloads with references, with 30%% of cheap answers compared",
    )  # fmt: skip
    parser.add_argument(
        "--win-rate-targets", type=_share, nargs="*", default=[], metavar="W",
        help="the same on open-ended (judged) workloads, where the target is a win rate against the strong "
        "tier: 0.5 is parity, so 0.45 reads 'almost never worse' (default: none, no such point)",
    )  # fmt: skip
    parser.add_argument(
        "--echolm-points", nargs="*", default=[], metavar="KEY=VALUE,...",
        help="further EchoLM points, each a comma-separated set of config overrides, e.g. "
        "routing.load_signal=ema or retrieval.k=5,retrieval.threshold=0.6 (checked before the run starts)",
    )  # fmt: skip
    parser.add_argument(
        "--sweep-judged", action="store_true",
        help="every operating point on open-ended workloads too (default: each system's first; judge calls are dear)",
    )  # fmt: skip
    parser.add_argument(
        "--pool-file", type=Path, metavar="FILE",
        help="the warm-up pool from this JSONL/CSV file (`prompt` or `question`, optional `reference` or "
        "`answer`) instead of a split of the workload, keeping the workload's framing and metric",
    )  # fmt: skip
    parser.add_argument(
        "--requests-file", type=Path, metavar="FILE",
        help="the request set from this file likewise; with --pool-file, the two must share no prompt",
    )  # fmt: skip
    parser.add_argument(
        "--tables", type=Path, metavar="DIR",
        help="run on answers tables (`echolm answers` builds them: DIR/WORKLOAD.jsonl): the warm pool comes from "
        "the table, every policy's quality is paired with strong-only over all the table's requests with a 95%% "
        "interval and its throughput ceiling, and strong-only and EchoLM are timed in open-loop passes at "
        "--load-multiples of strong-only's capacity, EchoLM's live answers scored and paired likewise; reference "
        "workloads (nq_open, banking77) are scored by their metric; judged ones (arena_hard) by the verdicts beside "
        "their table (`echolm answers --verdicts`), a live answer the table never held judged by the strong server "
        "after its pass and kept beside them (WORKLOAD.live-verdicts.jsonl)",
    )  # fmt: skip
    parser.add_argument(
        "--load-multiples", nargs="+", default=["1.0", "1.5"], metavar="X",
        help="with --tables: Poisson rates as multiples of strong-only's capacity, measured on this machine before "
        "each workload's passes (a closed loop of 8 clients, 48 requests after 8 untimed; its whole-pass rate, "
        "which reads low by up to a fifth) (default: %(default)s: where "
        "strong-only keeps up and where it cannot; 0.6 adds a light-load pass, about 4 minutes per system and "
        "workload); WORKLOAD=X,Y gives one workload its own, e.g. arena_hard=1.0, whose passes are long",
    )  # fmt: skip
    parser.add_argument(
        "--deployments", nargs="*", choices=["fixed", "elastic"], default=["fixed", "elastic"],
        help="with --tables: EchoLM's deployments on the same two cores: fixed (one cheap + one strong server) "
        "and elastic (two of each behind a gate of two slots) (default: both; none: only the --reuse system; "
        "strong-only: two strong servers)",
    )  # fmt: skip
    parser.add_argument(
        "--echolm-set",
        metavar="KEY=VALUE,...",
        help="with --tables: config overrides for every EchoLM pass, e.g. "
        "routing.load_signal=queue or routing.reuse.enabled=false (the router without reuse)",
    )
    parser.add_argument(
        "--feedback-share", type=float, default=0.0, metavar="F",
        help="with --tables: EchoLM's users score this share of its answers by the workload's reference metric "
        "and send each score to the proxy's POST /echolm/feedback during the pass, so the router learns as it "
        "would from users (default: %(default)s, none)",
    )  # fmt: skip
    parser.add_argument(
        "--store-server", action="store_true",
        help="with --tables: each EchoLM pass reaches its copy of the warm store through a `chroma run` server "
        "of its own, as a production deployment does, instead of opening it embedded in the proxy's process",
    )  # fmt: skip
    parser.add_argument(
        "--reuse", choices=["shipped", "pool"],
        help="with --tables: also time EchoLM with the reuse choice on the fixed split: shipped (the product's "
        "default weights and bar) or pool (its model fitted on the workload's warm pool, leave-one-out)",
    )  # fmt: skip
    parser.add_argument(
        "--reuse-bar", type=float, default=0.95, metavar="P",
        help="with --reuse pool: serve a cached answer at P(as good as the strong tier) >= P (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--pass-requests", nargs="+", default=["300"], metavar="N",
        help="with --tables: requests per open-loop pass, each pass its own slice of the table (default: %(default)s); "
        "WORKLOAD=N gives one workload its own, e.g. nq_open=1000",
    )  # fmt: skip
    parser.add_argument(
        "--replica-ports", type=int, nargs=2, default=[8103, 8104], metavar=("CHEAP", "STRONG"),
        help="ports of the second cheap and second strong server (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--overhead-sizes", type=int, nargs="*", default=[1000, 10000], metavar="N",
        help="cache sizes for the overhead microbenchmark (default: %(default)s; none: skip it; 100000 adds "
        "about 10 minutes on 2 cores, most of it embedding the entries)",
    )  # fmt: skip
    parser.add_argument(
        "--overhead-queries", type=int, default=300, help="timed queries per cache size (default: %(default)s)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.tables is not None:
        return run_on_tables(args)
    from echolm_lab.bench import report
    from echolm_lab.bench.runner import Bench, BenchOptions

    command = "echolm bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    name = args.run or time.strftime("bench-%Y%m%d-%H%M%S", time.gmtime())
    out = args.results / name
    out.mkdir(parents=True, exist_ok=True)
    # Stores, state databases and logs: kept for a look afterwards, apart from the report's folder.
    run_dir = args.work.resolve() / name  # absolute: each proxy starts in its config's folder
    (run_dir / "overhead").mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name in args.workloads:
        if args.warm is not None or args.requests is not None:
            from echolm_lab.bench.runner import DEFAULT_SIZES, USER_FILE_SIZES

            warm, requests = DEFAULT_SIZES.get(name, USER_FILE_SIZES)
            sizes[Path(name).stem] = (args.warm or warm, args.requests or requests)
    options = BenchOptions(
        config=args.config.resolve(),
        workloads=list(args.workloads),
        data_dir=args.data_dir,
        run_dir=run_dir,
        seed=args.seed,
        clients=args.clients,
        sizes=sizes,
        rates=list(args.rates),
        rate_requests=args.rate_requests,
        open_loop_warmup_s=args.warmup,
        semantic_thresholds=args.semantic_thresholds,
        difficulty_strong_shares=args.difficulty_strong_shares,
        echolm_cost_weights=list(args.cost_weights),
        quality_targets=list(args.quality_targets),
        win_rate_targets=list(args.win_rate_targets),
        echolm_points=list(args.echolm_points),
        sweep_judged=args.sweep_judged,
        replica_ports=(args.replica_ports[0], args.replica_ports[1]),
        pool_file=args.pool_file,
        requests_file=args.requests_file,
    )

    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the servers and proxies this run started stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        bench = Bench(options, log=lambda line: print(line, file=sys.stderr))
    except EchoLMError as exc:
        print(f"echolm bench: {exc}", file=sys.stderr)
        return 2

    def write(results: list[Any], overhead: dict[str, Any] | None) -> None:
        summary = report.summarize(results, command, args.p95_bound, strongest=bench.strong)
        if overhead is not None:
            summary["overhead"] = overhead
        plots = []
        if results:
            plots.append(report.plot_quality_vs_throughput(summary, out / "quality_vs_throughput.png"))
            plots.append(report.plot_latency_cdf(results, out / "latency_cdf.png"))
        if overhead is not None:
            from echolm_lab.bench.overhead import plot_overhead

            plot_overhead(overhead, out / "overhead_vs_cache_size.png")
            plots.append(out / "overhead_vs_cache_size.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        rows = "".join(json.dumps(row) + "\n" for row in report.request_rows(results))
        partial = out / "requests.jsonl.partial"  # renamed when whole: a reader never sees half a file
        partial.write_text(rows, encoding="utf-8")
        partial.replace(out / "requests.jsonl")
        (out / "report.md").write_text(
            report.format_report(summary, overhead, [str(p) for p in plots]), encoding="utf-8"
        )

    try:
        # Written after every workload too: a run cut short keeps what it measured.
        results = bench.run(lambda done: write(done, None))
        overhead: dict[str, Any] | None = None
        if args.overhead_sizes:
            from echolm_lab.bench.overhead import run_overhead

            overhead = run_overhead(
                args.overhead_sizes, args.overhead_queries, config=args.config.resolve(), data_dir=args.data_dir,
                seed=args.seed, work_dir=run_dir / "overhead",
            )  # fmt: skip
    except EchoLMError as exc:
        print(f"echolm bench: {exc}", file=sys.stderr)
        return 2
    write(results, overhead)
    print(f"wrote {out / 'report.md'}")
    return 0


def run_on_tables(args: argparse.Namespace) -> int:
    """`echolm bench --tables DIR`: policies off the tables, open-loop passes on the real servers."""
    from echolm_lab.bench import table_bench_report as report
    from echolm_lab.bench.answers_table import SIZES
    from echolm_lab.bench.table_bench import TableBench, TableBenchOptions
    from echolm_lab.bench.table_build import committed_workload
    from echolm_lab.cli.answers import lookup_seconds
    from echolm_middleware.config import load_settings
    from echolm_middleware.factory import EMBEDDERS

    command = "echolm bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    name = args.run or time.strftime("bench-tables-%Y%m%d-%H%M%S", time.gmtime())
    missing = [w for w in args.workloads if w not in SIZES or not (args.tables / f"{w}.jsonl").exists()]
    if missing:
        print(f"echolm bench: no answers table for {', '.join(missing)} in {args.tables}", file=sys.stderr)
        return 2
    try:
        plan = _pass_plan(args)
    except EchoLMError as exc:
        print(f"echolm bench: {exc}", file=sys.stderr)
        return 2
    out = args.results / name
    out.mkdir(parents=True, exist_ok=True)
    settings, _ = load_settings(args.config)
    embedder = EMBEDDERS[settings.embedder.backend](settings)
    options = TableBenchOptions(
        config=args.config.resolve(), workloads=list(args.workloads), data_dir=args.data_dir, tables=args.tables,
        run_dir=args.work.resolve() / name, seed=args.seed, warmup_s=args.warmup, deployments=list(args.deployments),
        **plan,
        replica_ports=(args.replica_ports[0], args.replica_ports[1]), reuse=args.reuse, reuse_bar=args.reuse_bar,
        feedback_share=args.feedback_share, store_server=args.store_server,
    )  # fmt: skip
    if not 0.0 <= args.feedback_share <= 1.0:
        print("echolm bench: --feedback-share must lie in [0, 1]", file=sys.stderr)
        return 2
    if args.echolm_set:
        from echolm_lab.bench.runner import check_overrides, point_overrides

        try:
            options.echolm_env = point_overrides(args.echolm_set)
            check_overrides(load_settings(args.config)[1], options.echolm_env)
        except EchoLMError as exc:
            print(f"echolm bench: {exc}", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def write(runs: list[Any]) -> None:
        summary = report.summarize(runs, command, args.p95_bound, args.warmup)
        plots = [
            report.plot_quality_vs_offload(summary, out / "quality_vs_offload.png"),
            report.plot_latency_vs_load(summary, out / "latency_vs_load.png"),
        ]
        reliability = report.plot_reuse_reliability(summary, out / "reuse_reliability.png")
        if reliability is not None:
            plots.append(reliability)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (out / "report.md").write_text(report.format_report(summary, [str(p) for p in plots]), encoding="utf-8")

    try:
        # Our lookup per reused answer (a policy's ceiling counts it), measured before any server is busy.
        if args.workloads:
            first = committed_workload(args.workloads[0], args.data_dir, seed=args.seed)
            options.reuse_s = lookup_seconds(embedder.embed, first)
        runs = TableBench(options, embedder, log=lambda line: print(line, file=sys.stderr)).run(write)
    except EchoLMError as exc:
        print(f"echolm bench: {exc}", file=sys.stderr)
        return 2
    write(runs)
    print(f"wrote {out / 'report.md'}")
    return 0
