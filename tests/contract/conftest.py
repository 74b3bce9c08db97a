"""Every implementation of a port, real ones included, behind one parametrized fixture per port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from echolm_middleware.backends.chroma_store import ChromaExampleStore
from echolm_middleware.backends.memory_store import InMemoryExampleStore
from echolm_middleware.backends.minilm import MiniLMEmbedder
from echolm_middleware.backends.sqlite_state import SQLiteState
from echolm_middleware.config import EmbedderSettings, StoreSettings
from echolm_middleware.core.ports import ExampleStore


def chroma_store(path: Path) -> ChromaExampleStore:
    return ChromaExampleStore(StoreSettings(backend="chroma", path=path, collection_prefix="test", batch_size=2))


@pytest.fixture(params=["memory", "chroma"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ExampleStore:
    """An empty example store; the Chroma one is a real embedded client on a fresh directory."""
    if request.param == "memory":
        return InMemoryExampleStore()
    return chroma_store(tmp_path / "chroma")


@pytest.fixture(params=["file", "memory"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteState]:
    """An empty SQLite state, on a file or in memory."""
    opened = SQLiteState(tmp_path / "state" / "echolm.db" if request.param == "file" else ":memory:")
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    """The real all-MiniLM-L6-v2 from its PyPI package, loaded once per module."""
    loaded = MiniLMEmbedder(EmbedderSettings(threads=1))
    loaded.embed(["warm up"])
    return loaded
