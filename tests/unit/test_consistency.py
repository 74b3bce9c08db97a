"""Self-consistency over sampled answers (`core.consistency`), as the upkeep's replay keeps one."""

from __future__ import annotations

import math

import pytest

from echolm_middleware.core.consistency import most_agreed


def _unit(*values: float) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def test_the_majority_answer_is_kept_over_a_stray_greedy_one() -> None:
    stray, agreed = _unit(0.0, 1.0), _unit(1.0, 0.1)
    assert most_agreed([stray, agreed, agreed, _unit(1.0, 0.0)]) == 1


def test_a_split_vote_keeps_the_earliest_answer() -> None:
    a, b = _unit(1.0, 0.0), _unit(0.0, 1.0)
    assert most_agreed([a, b]) == 0
    assert most_agreed([b, a, a, b]) == 0


def test_one_answer_is_its_own_medoid_and_none_is_an_error() -> None:
    assert most_agreed([_unit(0.3, 0.4)]) == 0
    with pytest.raises(ValueError, match="no answers"):
        most_agreed([])
