"""`echolm soak`: a long bounded load on several proxy workers, with RSS over time."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from echolm_lab.datasets import default_data_dir


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "soak",
        help="a long load on N proxy workers over Redis and a Chroma server, with RSS over time",
        description=(
            "Start the config's local tiers, a Redis and a Chroma server and a proxy with --workers workers, "
            "all on loopback; measure the saturation rate with a short closed loop (or take --rate), then send "
            "Poisson arrivals at it for --minutes while sampling the proxy processes' resident memory. Writes "
            "soak.json and README.md under --results/--run. Uses the config's tier ports: run nothing else "
            "on them meanwhile."
        ),
    )
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="proxy config (default: %(default)s)")
    parser.add_argument(
        "--data-dir", type=Path, default=default_data_dir(),
        help="request sets (default: $ECHOLM_DATA_DIR, else the copies shipped with the lab: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--workload", default="nq_open", help="built-in workload or a JSONL/CSV file (default: %(default)s)"
    )
    parser.add_argument("--minutes", type=_positive, default=30.0, help="how long to send load (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="proxy worker processes (default: %(default)s)")
    parser.add_argument("--rate", type=_positive, help="arrivals per second (default: the measured saturation rate)")
    parser.add_argument("--clients", type=int, default=2, help="clients of the saturation probe (default: %(default)s)")
    parser.add_argument(
        "--rss-every", type=_positive, default=15.0, help="seconds between RSS samples (default: %(default)s)"
    )
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="(default: %(default)s)")
    parser.add_argument("--run", help="name of this run's folder (default: soak-<UTC time>)")
    parser.add_argument(
        "--work", type=Path, default=Path(".echolm/soak"), help="servers' data and logs (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=7, help="arrival times (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from echolm_lab.bench.soak import Soak, SoakOptions, write_report

    command = "echolm soak " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    name = args.run or time.strftime("soak-%Y%m%d-%H%M%S", time.gmtime())
    options = SoakOptions(
        config=args.config.resolve(),
        data_dir=args.data_dir,
        run_dir=args.work.resolve() / name,
        workload=args.workload,
        minutes=args.minutes,
        workers=args.workers,
        rate_rps=args.rate,
        clients=args.clients,
        rss_every_s=args.rss_every,
        seed=args.seed,
    )
    result = Soak(options, command).run()
    path = write_report(result, args.results / name)
    print(path.read_text().split("\n| s | RSS MiB |")[0])
    print(f"report: {path}")
    return 0
