"""Entry point of the `echolm` command: a dict registry of the product's subcommands, plus those other
installed packages (the lab: bench, demo, soak, servers, tiers) declare under `echolm.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

# name -> module that defines `register(subparsers)`; modules import their heavy parts lazily so
# `echolm --help` stays fast.
SUBCOMMANDS: dict[str, str] = {
    "bench": "echolm_lab.cli.bench",
    "demo": "echolm_lab.cli.demo",
    "explain": "echolm_middleware.cli.explain",
    "proxy": "echolm_middleware.cli.proxy",
    "replay": "echolm_middleware.cli.replay",
    "servers": "echolm_lab.cli.servers",
    "soak": "echolm_lab.cli.soak",
    "tiers": "echolm_lab.cli.tiers",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echolm",
        description=(
            "EchoLM in-context caching for LLM serving: demo, benchmark, inspection, cache upkeep and local tiers."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in subcommand_modules().values():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
