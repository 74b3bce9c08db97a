"""Fault injection for tests only; never on a user's path.

A proxy under test gets this folder on PYTHONPATH, so every one of its Python processes (each worker)
runs this at start: MiniLM's `embed` raises while the file named by ECHOLM_TEST_EMBEDDER_FAULT exists,
as an embedder that broke at run time would, and works again once the test removes the file.
"""

import os
from pathlib import Path

_FLAG = os.environ.get("ECHOLM_TEST_EMBEDDER_FAULT")

if _FLAG:
    from echolm_middleware.backends import minilm

    _real_embed = minilm.MiniLMEmbedder.embed

    def _embed(self, texts):  # type: ignore[no-untyped-def]
        if Path(_FLAG).exists():
            raise RuntimeError("embedder fault injected by the test")
        return _real_embed(self, texts)

    minilm.MiniLMEmbedder.embed = _embed  # type: ignore[method-assign]
