"""The core knows no framework: it imports with the frameworks blocked, and never names them."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import echolm_middleware.core

FRAMEWORKS = ("litellm", "langchain_core", "chromadb", "sentence_transformers", "apscheduler", "torch")
CORE = Path(echolm_middleware.core.__file__).parent
CORE_FILES = sorted(CORE.glob("*.py"))

_BLOCKED_IMPORT = textwrap.dedent(
    """
    import importlib
    import importlib.abc
    import pkgutil
    import sys

    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked framework import: {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    import echolm_middleware.core as core

    names = sorted(m.name for m in pkgutil.iter_modules(core.__path__, "echolm_middleware.core."))
    for name in names:
        importlib.import_module(name)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("imported", len(names), "loaded-frameworks", loaded)
    """
)


def test_the_core_imports_with_every_framework_blocked() -> None:
    script = _BLOCKED_IMPORT.format(blocked=set(FRAMEWORKS))

    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=CORE.parents[1],
    )

    assert result.returncode == 0, result.stderr
    assert f"imported {len(CORE_FILES) - 1} loaded-frameworks []" in result.stdout


def test_the_blocker_really_blocks() -> None:
    # Guards the test above: the same finder must make a framework import fail.
    script = _BLOCKED_IMPORT.format(blocked=set(FRAMEWORKS)) + "\nimport chromadb\n"

    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=CORE.parents[1],
    )

    assert result.returncode != 0
    assert "blocked framework import: chromadb" in result.stderr


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in {
            "import_module",
            "__import__",
            "require",
        }:
            roots.update(
                arg.value.split(".")[0]
                for arg in node.args[:1]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            )
    return roots


def test_no_core_module_names_a_framework_even_lazily() -> None:
    assert len(CORE_FILES) >= 8
    offenders = {
        path.name: sorted(_imported_roots(path) & set(FRAMEWORKS))
        for path in CORE_FILES
        if _imported_roots(path) & set(FRAMEWORKS)
    }

    assert offenders == {}


def test_the_ast_scan_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "def f():\n"
        "    import chromadb.api\n"
        "    from litellm import completion\n"
        "    return importlib.import_module('torch'), require('apscheduler', 'scheduler')\n",
        encoding="utf-8",
    )

    assert _imported_roots(sample) == {"os", "chromadb", "litellm", "torch", "apscheduler"}
