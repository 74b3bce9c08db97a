"""Request sets for the demo: NQ-open JSONL (`question`, `answer` list) or any JSONL/CSV with `prompt`."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from echolm_middleware.errors import EchoLMError


@dataclass(frozen=True)
class QARecord:
    prompt: str
    references: tuple[str, ...]


def default_nq_path() -> Path:
    """NQ-open's dev set in the shared data folder beside the checkout."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nq_open" / "NQ-open.dev.jsonl"


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
    """Read a JSONL or CSV request file; a malformed line is an error naming the line."""
    if not path.exists():
        raise EchoLMError(f"no data file at {path}")
    records: list[QARecord] = []
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.DictReader(handle), 2):
                records.append(_record(dict(row), f"{path}:{number}"))
        return records
    with path.open(encoding="utf-8") as handle:
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
