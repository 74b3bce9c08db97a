"""A judge among answers: of several different answers to one question, the strongest tier says which is right.

The replay's self-consistency (`core.consistency`) keeps the answer the samples agree with most; where
they disagree, agreement says little about which is right. Here the distinct answers are put back to the
strongest tier with the question, under the same instructions the question had, and it names one by its
number. The answers are listed most given first (a tie keeps the earlier, so the greedy answer leads a
split), which tells the judge the vote too; a reply naming no listed answer keeps the first.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

# The judge names a number; a few tokens leave room for "Answer 2." and nothing more.
PICK_MAX_TOKENS = 8

_TEMPLATE = """{question}

Different answers were given to the message above:
{listed}

Which answer is correct? Reply with its number only."""
_NUMBER = re.compile(r"\b(\d{1,2})\b")


def plain(text: str) -> str:
    """An answer as compared: up to case, spacing and a final dot."""
    return " ".join(text.lower().strip().rstrip(".").split())


def distinct_answers(answers: Sequence[str]) -> list[str]:
    """The different answers, most given first (compared by `plain`; a tie keeps the earlier), each as first
    written."""
    counts = Counter(plain(text) for text in answers)
    first: dict[str, str] = {}
    for text in answers:
        first.setdefault(plain(text), text.strip())
    order = {key: index for index, key in enumerate(first)}
    return [first[key] for key in sorted(first, key=lambda key: (-counts[key], order[key]))]


def pick_prompt(question: str, candidates: Sequence[str]) -> str:
    """The judge's message: the question, then the candidates numbered from 1."""
    listed = "\n".join(f"{number}. {' '.join(text.split())}" for number, text in enumerate(candidates, start=1))
    return _TEMPLATE.format(question=question.strip(), listed=listed)


def parse_pick(reply: str, candidates: Sequence[str]) -> int | None:
    """The index of the candidate the judge named: by its number, or by repeating one of them word for word
    (a small model under instructions to "reply with the label only" writes the label); None if neither."""
    match = _NUMBER.search(reply)
    if match is not None and 1 <= int(match.group(1)) <= len(candidates):
        return int(match.group(1)) - 1
    said = plain(reply)
    for index, text in enumerate(candidates):
        if plain(text) == said:
            return index
    return None
