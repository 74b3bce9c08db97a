"""Import optional dependencies lazily, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from echolm_middleware.errors import MissingExtra


def require(module: str, extra: str) -> ModuleType:
    """Import `module`, or explain which `pip install 'echolm-middleware[extra]'` provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{module} is not installed; install it with: pip install 'echolm-middleware[{extra}]'"
        ) from exc
