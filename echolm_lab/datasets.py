"""Request sets for the demo: NQ-open JSONL (`question`, `answer` list) or any JSONL/CSV with `prompt`."""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from echolm_middleware.errors import EchoLMError


@dataclass(frozen=True)
class QARecord:
    prompt: str
    references: tuple[str, ...]


DATA_DIR_VARIABLE = "ECHOLM_DATA_DIR"


def default_data_dir() -> Path:
    """The request sets the lab reads: $ECHOLM_DATA_DIR, else the copies shipped in `echolm_lab/data`
    (NQ-open, Banking77, Arena-Hard with GPT-4-0314's answers; their licences beside them)."""
    chosen = os.environ.get(DATA_DIR_VARIABLE)
    return Path(chosen) if chosen else Path(__file__).resolve().parent / "data"


def default_nq_path() -> Path:
    """NQ-open's dev set in the default data folder."""
    return default_data_dir() / "nq_open" / "NQ-open.dev.jsonl"


def _record(row: dict[str, object], where: str) -> QARecord:
    prompt = row.get("question", row.get("prompt"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise EchoLMError(f"{where}: no `question` or `prompt` text")
    references = row.get("answer", row.get("reference", ()))
    if isinstance(references, str):
        references = (references,)
    if not isinstance(references, list | tuple) or not all(isinstance(r, str) for r in references):
        raise EchoLMError(f"{where}: `answer`/`reference` must be a string or a list of strings")
    return QARecord(prompt.strip(), tuple(references))


def load_records(path: Path) -> list[QARecord]:
    """Read a JSONL or CSV request file; a malformed line is an error naming the line.

    `utf-8-sig` reads files that spreadsheet programs saved with a byte-order mark.
    """
    if not path.exists():
        raise EchoLMError(f"no data file at {path}")
    records: list[QARecord] = []
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for number, row in enumerate(csv.DictReader(handle), 2):
                records.append(_record(dict(row), f"{path}:{number}"))
        return records
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EchoLMError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise EchoLMError(f"{path}:{number}: each line must be a JSON object")
            records.append(_record(row, f"{path}:{number}"))
    return records


def split_records(
    records: list[QARecord], warm: int, requests: int, seed: int
) -> tuple[list[QARecord], list[QARecord]]:
    """A seeded shuffle split into a warm-up pool and a request set that do not overlap."""
    if warm + requests > len(records):
        raise EchoLMError(f"asked for {warm} warm-up + {requests} requests but the file has {len(records)}")
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:warm], shuffled[warm : warm + requests]


def split_with_neighbours(
    records: list[QARecord],
    warm: int,
    requests: int,
    seed: int,
    *,
    share: float,
    vectors: Sequence[Sequence[float]],
    min_similarity: float,
) -> tuple[list[QARecord], list[QARecord], int]:
    """Like `split_records`, but `share` of the requests have their nearest neighbour in the warm pool.

    Real traffic repeats itself far more than NQ-open does; this builds a request set with a known
    share of near-duplicates (cosine ≥ `min_similarity`) so the demo shows both cases. Returns the
    split and the number of paired requests actually found.
    """
    import numpy as np

    matrix = np.asarray(vectors, dtype=np.float32)
    similarity = matrix @ matrix.T
    np.fill_diagonal(similarity, -1.0)
    nearest = similarity.argmax(axis=1)
    rng = random.Random(seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    used: set[int] = set()
    paired_requests: list[int] = []
    paired_warm: list[int] = []
    wanted = min(round(share * requests), requests, warm)
    for index in order:
        if len(paired_requests) >= wanted:
            break
        partner = int(nearest[index])
        if similarity[index, partner] < min_similarity or index in used or partner in used:
            continue
        used.update((index, partner))
        paired_requests.append(index)
        paired_warm.append(partner)
    rest = [index for index in order if index not in used]
    warm_ids = paired_warm + rest[: warm - len(paired_warm)]
    request_ids = (
        paired_requests + rest[warm - len(paired_warm) : warm - len(paired_warm) + requests - len(paired_requests)]
    )
    if len(warm_ids) < warm or len(request_ids) < requests:
        raise EchoLMError(f"asked for {warm} warm-up + {requests} requests but the file has {len(records)}")
    rng.shuffle(request_ids)
    return [records[i] for i in warm_ids], [records[i] for i in request_ids], len(paired_requests)
