"""Verdicts for open-ended workloads: each other choice's answer judged against the strong tier's, once.

Arena-Hard has no reference answer: a choice's quality is how often the pairwise judge (the strongest
local tier, both orders, `quality_target.judge`) prefers it to the strong tier's answer to the same
request. Judging is the dearest work of the benchmark on a CPU (a judgement is two calls of a 500-token
prompt), so each verdict is kept like an answer: one JSON line per request and choice, keyed by the judge
model's hash, its server, the prompt and both answers, asked once and resumed after a kill. A policy's
win rate is then read off the two tables, paired with strong-only (a tie with itself, 0.5).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echolm_lab.bench.answers_table import CHEAP, CHEAP_WITH_EXAMPLES, STRONG, Answer, KeyedJsonl
from echolm_lab.bench.table_build import Endpoint, TableWorkload
from echolm_middleware.quality_target.judge import JudgeCall, judge_pair

JUDGED_CHOICES = (CHEAP, CHEAP_WITH_EXAMPLES)
# As the live bench judges (`runner.JUDGE_MAX_CHARS`, `JUDGE_MAX_TOKENS`): the prompt and both answers in
# about 500 tokens, and the verdict the 1.5B judge writes first.
JUDGE_MAX_CHARS = 2000
JUDGE_MAX_TOKENS = 24


@dataclass
class Verdict:
    key: str
    item: str  # the request's prompt
    choice: str  # the choice judged against the strong tier's answer (or "reuse")
    judge_sha256: str
    judge_server: str
    outcome: str  # win / tie / loss / unparsed, from the choice's side
    replies: list[str] = field(default_factory=list)  # the judge's two replies, candidate first then second
    created_at: float = 0.0


class VerdictsTable(KeyedJsonl[Verdict]):
    def __init__(self, path: Path) -> None:
        super().__init__(path, Verdict)


def verdicts_path(answers_path: Path) -> Path:
    """`arena_hard.jsonl` keeps its verdicts in `arena_hard.verdicts.jsonl` beside it."""
    return answers_path.with_name(answers_path.stem + ".verdicts.jsonl")


def verdict_key(judge: Endpoint, prompt: str, candidate: str, baseline: str) -> str:
    return _verdict_key(judge.model_sha256, judge.server_version, prompt, candidate, baseline)


def _verdict_key(judge_sha256: str, judge_server: str, prompt: str, candidate: str, baseline: str) -> str:
    canonical = json.dumps(
        {
            "judge": judge_sha256, "server": judge_server, "prompt": prompt, "candidate": candidate,
            "baseline": baseline, "max_chars": JUDGE_MAX_CHARS, "max_tokens": JUDGE_MAX_TOKENS,
        },
        sort_keys=True, ensure_ascii=False,
    )  # fmt: skip
    return hashlib.sha256(canonical.encode()).hexdigest()


def record_verdicts(
    source: TableWorkload,
    answers: Sequence[Answer],
    verdicts: VerdictsTable,
    judge: Endpoint,
    call: JudgeCall,
    *,
    extra: Mapping[str, Mapping[str, str]] | None = None,
    done: Callable[[str], None] = lambda choice: None,
) -> dict[str, int]:
    """Judge every request's other choices against its strong answer, asking only what the table lacks.

    `extra`: further candidates by choice name (e.g. "reuse": request prompt -> the nearest pool answer).
    """
    rows: dict[str, dict[str, str]] = {}
    for answer in answers:
        if answer.choice in (STRONG, *JUDGED_CHOICES):
            rows.setdefault(answer.item, {})[answer.choice] = answer.answer
    for choice, by_prompt in (extra or {}).items():
        for prompt, text in by_prompt.items():
            rows.setdefault(prompt, {})[choice] = text
    asked: dict[str, int] = {}
    for item in source.requests:
        row = rows.get(item.prompt, {})
        if STRONG not in row:
            continue
        for choice, candidate in sorted(row.items()):
            if choice == STRONG:
                continue
            key = verdict_key(judge, item.prompt, candidate, row[STRONG])
            if key not in verdicts:
                judged = judge_pair(call, item.prompt, candidate, row[STRONG], max_chars=JUDGE_MAX_CHARS)
                verdicts.add(
                    Verdict(
                        key=key, item=item.prompt, choice=choice, judge_sha256=judge.model_sha256,
                        judge_server=judge.server_version, outcome=judged.outcome, replies=list(judged.outputs),
                        created_at=time.time(),
                    )
                )  # fmt: skip
                asked[choice] = asked.get(choice, 0) + 1
            done(choice)
    return asked


def judged_scores(
    verdicts: Sequence[Verdict], requests: Sequence[Any], answers: Sequence[Answer] = ()
) -> dict[str, dict[str, float]]:
    """request prompt -> choice -> 0-1 quality against the strong tier (win 1, tie 0.5, loss 0; the strong
    tier itself 0.5); unparsed verdicts say nothing and are left out.

    A choice in `answers` whose answer is word for word one already judged for the same request (the cheap
    tier with no example worth showing answers as the cheap tier) shares that verdict: the key is the same,
    so `record_verdicts` asked the judge once, under the first choice's name.
    """
    asked = {item.prompt for item in requests}
    scored: dict[str, dict[str, float]] = {}

    def put(verdict: Verdict, choice: str) -> None:
        quality = {"win": 1.0, "tie": 0.5, "loss": 0.0}.get(verdict.outcome)
        if quality is not None:
            scored.setdefault(verdict.item, {STRONG: 0.5})[choice] = quality

    for verdict in verdicts:
        if verdict.item in asked:
            put(verdict, verdict.choice)
    by_key = {verdict.key: verdict for verdict in verdicts}
    judges = {(verdict.judge_sha256, verdict.judge_server) for verdict in verdicts}
    texts: dict[str, dict[str, str]] = {}
    for answer in answers:
        if answer.item in asked and answer.choice in (STRONG, *JUDGED_CHOICES):
            texts.setdefault(answer.item, {})[answer.choice] = answer.answer
    for prompt, row in texts.items():
        for choice, text in row.items():
            if STRONG not in row or choice == STRONG or choice in scored.get(prompt, {}):
                continue
            for judge_sha256, judge_server in judges:
                shared = by_key.get(_verdict_key(judge_sha256, judge_server, prompt, text, row[STRONG]))
                if shared is not None:
                    put(shared, choice)
    return scored


def live_verdicts_path(answers_path: Path) -> Path:
    """Verdicts on a live pass's answers that the table never held (`arena_hard.live-verdicts.jsonl`): kept
    apart so the table's policies read only the table's own choices."""
    return answers_path.with_name(answers_path.stem + ".live-verdicts.jsonl")


QUALITY_OF_OUTCOME = {"win": 1.0, "tie": 0.5, "loss": 0.0}


class LiveJudgement:
    """The 0-1 quality of a live answer to a judged request, against the table's strong answer to it.

    The strong answer itself ties (0.5, as strong-only against itself). An answer already judged for the
    request (the table's cheap answer, word for word, as a deterministic server gives it again) takes its
    verdict from either table; any other is judged now by `call`, both orders, and kept in `live`, so a
    rerun of the bench asks nothing twice. An unparsed verdict gives None: it says nothing either way.
    `tabled_texts`: each request's other tabled answers; a live answer equal to one but for the whitespace
    around it (the table keeps a server's trailing newlines, a live answer arrives stripped) is that answer.
    """

    def __init__(
        self, judge: Endpoint, call: JudgeCall, tabled: Sequence[Verdict], live: VerdictsTable,
        strong: Mapping[str, str], tabled_texts: Mapping[str, Sequence[str]] | None = None,
    ) -> None:  # fmt: skip
        self.judge, self.call, self.live, self.strong = judge, call, live, strong
        self.texts = tabled_texts or {}
        self.known = {verdict.key: verdict for verdict in tabled}
        self.asked = 0  # judgements asked by this instance (the rest came from a table)

    def __call__(self, answer: str, item: Any) -> float | None:
        baseline = self.strong[item.prompt]
        if answer.strip() == baseline.strip():
            return 0.5
        answer = next((text for text in self.texts.get(item.prompt, ()) if text.strip() == answer.strip()), answer)
        key = verdict_key(self.judge, item.prompt, answer, baseline)
        verdict = self.known.get(key) or self.live.get(key)
        if verdict is None:
            judged = judge_pair(self.call, item.prompt, answer, baseline, max_chars=JUDGE_MAX_CHARS)
            verdict = Verdict(
                key=key, item=item.prompt, choice="live", judge_sha256=self.judge.model_sha256,
                judge_server=self.judge.server_version, outcome=judged.outcome, replies=list(judged.outputs),
                created_at=time.time(),
            )  # fmt: skip
            self.live.add(verdict)
            self.asked += 1
        return QUALITY_OF_OUTCOME.get(verdict.outcome)
