"""Entry point of the `echolm` command: a dict registry of the product's subcommands, plus those other
installed packages (the lab: bench, demo, soak, servers, tiers) declare under `echolm.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

# name -> module that defines `register(subparsers)`; modules import their heavy parts lazily so
# `echolm --help` stays fast. `upkeep` also answers to `replay`, its old name (an argparse alias).
SUBCOMMANDS: dict[str, str] = {
    "explain": "echolm_middleware.cli.explain",
    "proxy": "echolm_middleware.cli.proxy",
    "upkeep": "echolm_middleware.cli.upkeep",
}
ENTRY_POINT_GROUP = "echolm.commands"


def subcommand_modules() -> dict[str, str]:
    """Every subcommand's module by name: the product's, and those installed packages declare (the product's win)."""
    declared = {point.name: point.value for point in entry_points(group=ENTRY_POINT_GROUP)}
    return dict(sorted({**declared, **SUBCOMMANDS}.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echolm",
        description=(
            "EchoLM in-context caching for LLM serving: demo, benchmark, inspection, cache upkeep and local tiers."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in subcommand_modules().items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # An image that ships the product alone (deploy/Dockerfile) keeps the wheel's metadata for the
            # lab's commands but not the lab: those commands are simply absent there.
            if exc.name == module_name.split(".")[0]:
                continue
            # A command whose extra is not installed (the lab's `servers` needs psutil, from `local`) must
            # not take every other command down with it: it stays listed and says what to install.
            _register_missing(subparsers, name, exc.name or str(exc))
            continue
        module.register(subparsers)
    return parser


def _register_missing(subparsers: Any, name: str, missing: str) -> None:
    message = f"echolm {name}: needs {missing}, which is not installed: pip install 'echolm-middleware[all]'"
    parser = subparsers.add_parser(name, help=f"(not installed: needs {missing}, from the [all] extra)")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # whatever was meant for it
    parser.set_defaults(func=lambda _args: _refuse(message))


def _refuse(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
