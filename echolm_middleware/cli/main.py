"""Entry point of the `echolm` command: a dict registry of subcommand modules."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> module that defines `register(subparsers)`; modules import their heavy parts lazily so
# `echolm --help` stays fast.
SUBCOMMANDS: dict[str, str] = {
    "bench": "echolm_middleware.cli.bench",
    "demo": "echolm_middleware.cli.demo",
    "explain": "echolm_middleware.cli.explain",
    "proxy": "echolm_middleware.cli.proxy",
    "replay": "echolm_middleware.cli.replay",
    "servers": "echolm_middleware.cli.servers",
    "soak": "echolm_middleware.cli.soak",
    "tiers": "echolm_middleware.cli.tiers",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echolm",
        description=(
            "EchoLM in-context caching for LLM serving: demo, benchmark, inspection, cache upkeep and local tiers."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
