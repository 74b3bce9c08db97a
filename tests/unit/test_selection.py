"""Stage-2 utility scoring and the choice of examples (threshold, k, token budget, near-duplicates)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from echolm_middleware.config import UtilityWeights
from echolm_middleware.core.selection import (
    FEATURES,
    fit_step,
    select_examples,
    utility,
    utility_features,
)
from echolm_middleware.core.types import Candidate, Example, ScoredExample

DAY = 86400.0
WEIGHTS = UtilityWeights().model_dump()


def _example(prompt: str, *, quality: float = 0.8, created_at: float = 0.0, source: str = "strong") -> Example:
    return Example(
        id=prompt,
        prompt=prompt,
        answer=f"answer to {prompt}",
        source_tier=source,
        quality=quality,
        created_at=created_at,
    )


def _scored(prompt: str, utility_: float, embedding: Sequence[float] | None = None) -> ScoredExample:
    return ScoredExample(Candidate(_example(prompt), similarity=utility_, embedding=embedding), utility_, {})


def _select(
    scored: Sequence[ScoredExample],
    *,
    k: int = 5,
    threshold: float = 0.5,
    token_budget: int = 1000,
    near_duplicate_similarity: float = 0.97,
    tokens: dict[str, int] | None = None,
) -> list[ScoredExample]:
    return select_examples(
        scored,
        k=k,
        threshold=threshold,
        token_budget=token_budget,
        near_duplicate_similarity=near_duplicate_similarity,
        count_tokens=lambda item: (tokens or {}).get(item.candidate.example.prompt, 10),
    )


def _prompts(items: Sequence[ScoredExample]) -> list[str]:
    return [item.candidate.example.prompt for item in items]


# ---- features and utility ---------------------------------------------------------------------


def test_utility_features_read_the_candidate_and_its_example() -> None:
    example = Example(
        id="e",
        prompt="p",
        answer="a",
        source_tier="mid",
        quality=0.7,
        created_at=0.0,
        uses=2,
        offload_successes=1.0,
    )
    candidate = Candidate(example, similarity=0.9)

    features = utility_features(candidate, now=15 * DAY, tier_strength={"mid": 0.5, "strong": 1.0}, half_life_days=30)

    assert features == pytest.approx(
        {"similarity": 0.9, "quality": 0.7, "source": 0.5, "offload": (1.0 + 1) / (2 + 2), "age": -0.5}
    )
    assert set(features) == set(FEATURES)


def test_an_unknown_source_tier_counts_as_middling_and_future_examples_are_not_negative_age() -> None:
    candidate = Candidate(_example("p", source="retired", created_at=10 * DAY), similarity=0.5)

    features = utility_features(candidate, now=0.0, tier_strength={"strong": 1.0}, half_life_days=30)

    assert features["source"] == 0.5
    assert features["age"] == 0.0


def test_utility_rises_strictly_with_similarity() -> None:
    similarities = [0.0, 0.5, 0.8, 0.85, 0.9, 0.95, 1.0]
    utilities = [
        utility(
            utility_features(Candidate(_example("p"), s), now=0.0, tier_strength={"strong": 1.0}, half_life_days=30),
            WEIGHTS,
        )
        for s in similarities
    ]

    assert all(0.0 < u < 1.0 for u in utilities)
    assert utilities == sorted(utilities)
    assert len(set(utilities)) == len(utilities)


def test_default_weights_put_a_near_duplicate_above_the_threshold_and_a_loose_match_below() -> None:
    def at(similarity: float) -> float:
        features = utility_features(
            Candidate(_example("p"), similarity), now=0.0, tier_strength={"strong": 1.0}, half_life_days=30
        )
        return utility(features, WEIGHTS)

    assert at(1.0) > 0.85
    assert at(0.6) < 0.5


def test_utility_is_finite_for_extreme_scores() -> None:
    features = dict.fromkeys(FEATURES, 1e6)

    assert utility(features, WEIGHTS) == pytest.approx(1.0)
    assert utility({name: -value for name, value in features.items()}, WEIGHTS) == pytest.approx(0.0)


@pytest.mark.parametrize("target", [0.0, 1.0])
def test_fit_step_moves_utility_towards_the_target(target: float) -> None:
    features = {"similarity": 0.9, "quality": 0.8, "source": 1.0, "offload": 0.5, "age": -0.1}
    before = utility(features, WEIGHTS)

    updated = fit_step(WEIGHTS, features, target, learning_rate=0.5)
    after = utility(features, updated)

    assert abs(after - target) < abs(before - target)
    assert UtilityWeights().model_dump() == WEIGHTS  # the input weights are not modified


@pytest.mark.parametrize(("target", "direction"), [(0.0, -1), (1.0, 1)])
def test_fit_step_moves_the_bias_alone_when_every_feature_is_zero(target: float, direction: int) -> None:
    features = dict.fromkeys(FEATURES, 0.0)

    updated = fit_step(WEIGHTS, features, target, learning_rate=0.1)

    assert (updated["bias"] - WEIGHTS["bias"]) * direction > 0
    assert {name: updated[name] for name in FEATURES} == {name: WEIGHTS[name] for name in FEATURES}


def test_fit_step_with_zero_learning_rate_changes_nothing() -> None:
    features = dict.fromkeys(FEATURES, 0.5)

    assert fit_step(WEIGHTS, features, 1.0, learning_rate=0.0) == WEIGHTS


# ---- choosing examples ------------------------------------------------------------------------


def test_examples_below_the_threshold_are_dropped() -> None:
    scored = [_scored("a", 0.9), _scored("b", 0.49), _scored("c", 0.5), _scored("d", 0.2)]

    assert _prompts(_select(scored, threshold=0.5)) == ["c", "a"]


@pytest.mark.parametrize(("k", "expected"), [(0, []), (1, ["a"]), (2, ["b", "a"]), (5, ["d", "c", "b", "a"])])
def test_at_most_k_examples_are_kept_the_best_ones(k: int, expected: list[str]) -> None:
    scored = [_scored("c", 0.7), _scored("a", 0.95), _scored("d", 0.6), _scored("b", 0.8)]

    assert _prompts(_select(scored, k=k)) == expected


def test_output_is_ordered_with_the_most_useful_example_last() -> None:
    scored = [_scored("mid", 0.8), _scored("best", 0.99), _scored("worst", 0.6)]

    kept = _select(scored)

    assert _prompts(kept) == ["worst", "mid", "best"]
    assert [item.utility for item in kept] == sorted(item.utility for item in kept)


def test_the_token_budget_skips_an_example_that_does_not_fit_but_keeps_a_smaller_one() -> None:
    scored = [_scored("big", 0.95), _scored("huge", 0.9), _scored("small", 0.8)]
    tokens = {"big": 60, "huge": 50, "small": 40}

    kept = _select(scored, token_budget=100, tokens=tokens)

    assert _prompts(kept) == ["small", "big"]
    assert [item.tokens for item in kept] == [40, 60]
    assert sum(item.tokens for item in kept) <= 100


def test_a_zero_token_budget_keeps_nothing() -> None:
    assert _select([_scored("a", 0.9)], token_budget=0) == []


def test_near_duplicates_by_embedding_keep_only_the_more_useful_one() -> None:
    scored = [
        _scored("How tall is the Eiffel Tower?", 0.9, embedding=[1.0, 0.0, 0.0]),
        _scored("Eiffel Tower height?", 0.8, embedding=[0.99, 0.01, 0.0]),
        _scored("Who built the Eiffel Tower?", 0.7, embedding=[0.6, 0.8, 0.0]),
    ]

    kept = _select(scored, near_duplicate_similarity=0.97)

    assert _prompts(kept) == ["Who built the Eiffel Tower?", "How tall is the Eiffel Tower?"]


def test_the_near_duplicate_limit_decides_what_counts_as_a_duplicate() -> None:
    scored = [_scored("a", 0.9, embedding=[1.0, 0.0]), _scored("b", 0.8, embedding=[0.8, 0.6])]

    assert _prompts(_select(scored, near_duplicate_similarity=0.81)) == ["b", "a"]
    assert _prompts(_select(scored, near_duplicate_similarity=0.8)) == ["a"]


def test_without_embeddings_near_duplicates_are_prompts_equal_up_to_case_and_spacing() -> None:
    scored = [
        _scored("What is the capital of France?", 0.9),
        _scored("  what is the   CAPITAL of france?\n", 0.85),
        _scored("What is the capital of Spain?", 0.8),
    ]

    kept = _select(scored)

    assert _prompts(kept) == ["What is the capital of Spain?", "What is the capital of France?"]


def test_a_candidate_with_an_embedding_and_one_without_compare_by_prompt() -> None:
    scored = [_scored("same prompt", 0.9, embedding=[1.0, 0.0]), _scored("Same  Prompt", 0.8)]

    assert _prompts(_select(scored)) == ["same prompt"]


def test_a_skipped_duplicate_does_not_use_up_k() -> None:
    scored = [
        _scored("a", 0.9, embedding=[1.0, 0.0]),
        _scored("a2", 0.85, embedding=[1.0, 0.0]),
        _scored("b", 0.8, embedding=[0.0, 1.0]),
    ]

    assert _prompts(_select(scored, k=2)) == ["b", "a"]


def test_an_unacceptable_example_is_skipped_and_only_would_be_kept_examples_are_asked() -> None:
    scored = [_scored("a", 0.9), _scored("b", 0.8), _scored("c", 0.7), _scored("d", 0.6), _scored("low", 0.1)]
    asked: list[str] = []

    def acceptable(item: ScoredExample) -> bool:
        asked.append(item.candidate.example.prompt)
        return item.candidate.example.prompt != "b"

    kept = select_examples(
        scored,
        k=2,
        threshold=0.5,
        token_budget=1000,
        near_duplicate_similarity=0.97,
        count_tokens=lambda item: 10,
        acceptable=acceptable,
    )

    assert _prompts(kept) == ["c", "a"]
    # Once k are kept nothing more is read: "d" (above the threshold) and "low" (below it) never asked.
    assert asked == ["a", "b", "c"]


def test_an_example_very_close_to_the_request_is_shown_alone() -> None:
    def close(prompt: str, similarity: float, utility_: float) -> ScoredExample:
        return ScoredExample(Candidate(_example(prompt), similarity=similarity), utility_, {})

    near_repeat = [close("card arrived?", 0.96, 0.9), close("card lost", 0.90, 0.8), close("pin", 0.85, 0.7)]
    looser = [close("card arrived?", 0.94, 0.9), close("card lost", 0.90, 0.8), close("pin", 0.85, 0.7)]

    def select(scored: list[ScoredExample], alone_at: float | None) -> list[str]:
        kept = select_examples(
            scored, k=3, threshold=0.5, token_budget=1000, near_duplicate_similarity=0.97,
            count_tokens=lambda item: 10, alone_at=alone_at,
        )  # fmt: skip
        return _prompts(kept)

    assert select(near_repeat, 0.95) == ["card arrived?"]
    assert select(looser, 0.95) == ["pin", "card lost", "card arrived?"]  # not close enough: all three
    assert select(near_repeat, None) == ["pin", "card lost", "card arrived?"]  # the rule off
