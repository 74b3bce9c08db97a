"""Reference metrics (SQuAD-style) and the request-set loaders the demo and benchmark read."""

from __future__ import annotations

from pathlib import Path

import pytest

from echolm_lab.datasets import QARecord, default_nq_path, load_records, split_records, split_with_neighbours
from echolm_middleware.errors import EchoLMError
from echolm_middleware.quality_target.answer_match import contains_gold, exact_match, normalize_answer, token_f1

NQ_DEV = default_nq_path()


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An   apple, a day ", "apple day"),
        ("Theatre", "theatre"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize(
    ("prediction", "golds", "em", "f1", "contains"),
    [
        ("The Eiffel Tower!", ["eiffel tower"], 1.0, 1.0, 1.0),
        ("Paris", ["London", "paris."], 1.0, 1.0, 1.0),
        ("Bobby Scott and Bob Russell", ["Bobby Scott"], 0.0, 2 * 0.4 * 1.0 / 1.4, 1.0),
        ("It was in December 1972.", ["14 December 1972 UTC", "December 1972"], 0.0, 2 * 0.4 / 1.4, 1.0),
        ("1972", ["December 1972"], 0.0, 2 * 1.0 * 0.5 / 1.5, 0.0),
        ("Scotland", ["Scott"], 0.0, 0.0, 0.0),
        ("", ["anything"], 0.0, 0.0, 0.0),
        ("the", ["a"], 1.0, 0.0, 0.0),  # both normalize to nothing: equal, but no tokens to overlap
        ("Paris", [], 0.0, 0.0, 0.0),
    ],
)
def test_squad_style_metrics(prediction: str, golds: list[str], em: float, f1: float, contains: float) -> None:
    assert exact_match(prediction, golds) == em
    assert token_f1(prediction, golds) == pytest.approx(f1)
    assert contains_gold(prediction, golds) == contains


def test_token_f1_takes_the_best_gold() -> None:
    assert token_f1("new york city", ["york", "new york city", "city"]) == 1.0


# ---- datasets ---------------------------------------------------------------------------------


def test_the_nq_open_dev_file_loads_all_its_records() -> None:
    records = load_records(NQ_DEV)

    assert len(records) == 3610
    assert records[0] == QARecord(
        "when was the last time anyone was on the moon", ("14 December 1972 UTC", "December 1972")
    )
    assert all(record.prompt and record.references for record in records)


def test_a_csv_with_prompt_and_reference_columns_loads(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    path.write_text(
        'prompt,reference\n"Who wrote Hamlet?",Shakespeare\n  Capital of France? ,Paris\n', encoding="utf-8"
    )

    assert load_records(path) == [
        QARecord("Who wrote Hamlet?", ("Shakespeare",)),
        QARecord("Capital of France?", ("Paris",)),
    ]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("excel.csv", "prompt,reference\r\nWho wrote Hamlet?,Shakespeare\r\n"),
        ("bom.jsonl", '{"prompt": "Who wrote Hamlet?", "reference": "Shakespeare"}\n'),
    ],
)
def test_a_file_starting_with_a_utf8_byte_order_mark_loads(tmp_path: Path, name: str, text: str) -> None:
    # Spreadsheet programs and Windows editors write a BOM at the start of UTF-8 files.
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))

    assert load_records(path) == [QARecord("Who wrote Hamlet?", ("Shakespeare",))]


def test_a_csv_row_without_a_prompt_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    path.write_text("prompt,reference\nok?,yes\n,missing\n", encoding="utf-8")

    with pytest.raises(EchoLMError, match=rf"{path}:3: no `question` or `prompt`"):
        load_records(path)


def test_jsonl_with_prompt_and_blank_lines_loads(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text('{"prompt": "Q1", "reference": "A1"}\n\n{"prompt": "Q2"}\n', encoding="utf-8")

    assert load_records(path) == [QARecord("Q1", ("A1",)), QARecord("Q2", ())]


@pytest.mark.parametrize(
    ("second_line", "message"),
    [
        ('{"question": "unterminated', r":2: not JSON"),
        ('["a", "list"]', r":2: each line must be a JSON object"),
        ('{"answer": ["no question"]}', r":2: no `question` or `prompt` text"),
        (
            '{"question": "q", "answer": [1, 2]}',
            r":2: `answer`/`reference` must be a string or a list of strings",
        ),
    ],
)
def test_a_malformed_jsonl_line_is_an_error_naming_the_line(tmp_path: Path, second_line: str, message: str) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text('{"question": "fine", "answer": ["yes"]}\n' + second_line + "\n", encoding="utf-8")

    with pytest.raises(EchoLMError, match=message) as raised:
        load_records(path)

    assert str(path) in str(raised.value)


def test_a_missing_data_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EchoLMError, match="no data file"):
        load_records(tmp_path / "absent.jsonl")


def _numbered(count: int) -> list[QARecord]:
    return [QARecord(f"question {i}", (f"answer {i}",)) for i in range(count)]


def test_split_records_is_seeded_and_disjoint() -> None:
    records = _numbered(100)

    warm, requests = split_records(records, warm=30, requests=50, seed=7)
    warm_again, requests_again = split_records(records, warm=30, requests=50, seed=7)
    warm_other, _ = split_records(records, warm=30, requests=50, seed=8)

    assert (warm, requests) == (warm_again, requests_again)
    assert warm != warm_other
    assert len(warm) == 30 and len(requests) == 50
    assert not {r.prompt for r in warm} & {r.prompt for r in requests}
    assert {r.prompt for r in warm} | {r.prompt for r in requests} <= {r.prompt for r in records}
    assert records == _numbered(100)  # the input is not shuffled in place


def test_split_records_refuses_more_than_the_file_has() -> None:
    with pytest.raises(EchoLMError, match="asked for 60 warm-up \\+ 50 requests but the file has 100"):
        split_records(_numbered(100), warm=60, requests=50, seed=0)


def _twins(pairs: int) -> tuple[list[QARecord], list[list[float]]]:
    """Records 2i and 2i+1 share a direction of their own: each is the other's only close neighbour."""
    records, vectors = [], []
    for i in range(pairs):
        for twin in (0, 1):
            records.append(QARecord(f"question {i}.{twin}", (f"answer {i}",)))
            vector = [0.0] * pairs
            vector[i] = 1.0
            vectors.append(vector)
    return records, vectors


def test_split_with_neighbours_puts_the_asked_share_of_requests_next_to_a_warm_twin() -> None:
    records, vectors = _twins(20)

    warm, requests, paired = split_with_neighbours(records, 10, 10, 3, share=0.4, vectors=vectors, min_similarity=0.9)

    assert (len(warm), len(requests), paired) == (10, 10, 4)
    assert not {r.prompt for r in warm} & {r.prompt for r in requests}
    warm_pairs = {r.references for r in warm}
    assert sum(r.references in warm_pairs for r in requests) >= 4
    again = split_with_neighbours(records, 10, 10, 3, share=0.4, vectors=vectors, min_similarity=0.9)
    assert again == (warm, requests, paired)


def test_split_with_neighbours_pairs_nothing_below_the_similarity_floor() -> None:
    records, vectors = _twins(10)

    warm, requests, paired = split_with_neighbours(records, 5, 5, 0, share=1.0, vectors=vectors, min_similarity=1.01)

    assert paired == 0
    assert (len(warm), len(requests)) == (5, 5)
    assert not {r.prompt for r in warm} & {r.prompt for r in requests}
