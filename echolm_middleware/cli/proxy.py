"""`echolm proxy`: check the config's `echolm` section, then run the LiteLLM proxy with our callback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from echolm_middleware.errors import ConfigError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "proxy",
        help="validate config.yaml and run the LiteLLM proxy with the EchoLM callback",
        description=(
            "Validate the `echolm` section of a LiteLLM proxy config (unknown keys, tiers that name no "
            "model group) and, if it is sound, replace this process with `litellm --config`. Sets "
            "LITELLM_LOCAL_MODEL_COST_MAP=True and generates LITELLM_MASTER_KEY when unset (printed)."
        ),
    )
    parser.add_argument("--config", type=Path, default=Path("config.yaml"), help="proxy config (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=4000, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="proxy worker processes; more than 1 needs store.server_url (a Chroma server) (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--check", action="store_true", help="only validate the config, then exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from echolm_middleware.proxy_launch import proxy_environment, validate_proxy_config

    missing = [name for name in ("litellm", "fastapi") if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"echolm: {', '.join(missing)} is not installed; the proxy needs: pip install 'echolm-middleware[litellm]'",
            file=sys.stderr,
        )
        return 2
    try:
        settings = validate_proxy_config(args.config)
    except ConfigError as exc:
        print(f"echolm: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1 and settings.store.backend == "chroma" and not settings.store.server_url:
        print(
            "echolm: store.server_url: several workers cannot share an embedded Chroma; run `chroma run` and set it",
            file=sys.stderr,
        )
        return 2
    print(f"echolm: config {args.config} is valid ({len(settings.tiers)} tiers: "
          f"{', '.join(t.name for t in settings.tiers)})")  # fmt: skip
    if args.check:
        return 0
    env = proxy_environment(workers=args.workers)
    if "LITELLM_MASTER_KEY" not in os.environ:
        print(f"echolm: generated LITELLM_MASTER_KEY={env['LITELLM_MASTER_KEY']}")
    command = [
        sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", str(args.config),
        "--host", args.host, "--port", str(args.port), "--num_workers", str(args.workers),
    ]  # fmt: skip
    os.execve(sys.executable, command, env)
