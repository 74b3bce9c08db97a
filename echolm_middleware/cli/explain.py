"""`echolm explain <request-id>`: print why a request went to its tier."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from echolm_middleware.errors import EchoLMError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="print why a request was sent to its tier",
        description=(
            "Read the kept decision for a request id (the x-echolm-request-id response header, or "
            "response.echolm.request_id) from the state database named in the config, and print the "
            "examples found, their utilities, each tier's score terms and the reason for the choice."
        ),
    )
    parser.add_argument("request_id", help="the request id to explain")
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="proxy config (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the raw decision as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from echolm_middleware.backends.sqlite_state import SQLiteState
    from echolm_middleware.config import load_settings
    from echolm_middleware.explain import format_decision

    try:
        settings, _ = load_settings(args.config)
        if settings.state.backend != "sqlite":
            print("echolm: state.backend is 'memory'; decisions are not kept across processes", file=sys.stderr)
            return 2
        if not settings.state.path.exists():
            print(f"echolm: no state database at {settings.state.path}", file=sys.stderr)
            return 1
        state = SQLiteState(settings.state.path)
        decision = state.get(args.request_id)
        if decision is None:
            print(f"echolm: no decision with request id {args.request_id!r}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(decision.to_dict(), indent=2))
        else:
            print(format_decision(decision, state.recorded_by(args.request_id)))
        return 0
    except EchoLMError as exc:
        print(f"echolm: {exc}", file=sys.stderr)
        return 2
