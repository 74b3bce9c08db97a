"""The router's offload model: features from what retrieval found, a logistic probability per choice,
fitted on train items and checked for calibration on held-out ones."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from echolm_lab.bench.offload_study import calibration, fit_logistic, plot_reliability, reuse_label, wilson_interval
from echolm_middleware.core.offload_model import FEATURES, OffloadModel, offload_features, same_answer_key
from echolm_middleware.core.types import Candidate, Example


def _candidate(similarity: float, answer: str) -> Candidate:
    return Candidate(Example(id=answer + str(similarity), prompt="q", answer=answer, source_tier="strong",
                             quality=0.8, created_at=0.0), similarity)  # fmt: skip


def test_features_say_how_close_the_neighbours_are_and_whether_their_answers_agree() -> None:
    found = [_candidate(0.7, "lost_card"), _candidate(0.95, "Lost card."), _candidate(0.9, "lost card"),
             _candidate(0.85, "card_arrival"), _candidate(0.5, "lost_card"), _candidate(0.99, "x")]  # fmt: skip

    values = dict(zip(FEATURES, offload_features(found[:5], "where is my card"), strict=True))

    assert values["bias"] == 1.0 and values["top_similarity"] == 0.95
    assert values["mean_top3_similarity"] == pytest.approx((0.95 + 0.9 + 0.85) / 3)
    assert values["share_close"] == pytest.approx(3 / 5)
    # The nearest says "Lost card."; of the other four, "lost card" and both "lost_card" are the same words.
    assert same_answer_key("Lost card.") == same_answer_key("lost card") != same_answer_key("lost_card")
    assert values["neighbour_agreement"] == pytest.approx(1 / 4)
    assert values["log_answer_chars"] == pytest.approx(math.log1p(len("Lost card.")))
    assert offload_features([], "q")[:5] == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_online_evidence_moves_the_probability_towards_what_was_observed() -> None:
    model = OffloadModel()
    x = [1.0, 0.9, 0.9, 1.0, 1.0, 3.0, 2.0]
    assert model.probability(x) == 0.5
    for _ in range(20):
        model.learn(x, 1.0, learning_rate=0.05)
    assert model.probability(x) > 0.8
    with pytest.raises(ValueError):
        OffloadModel([0.0])


def test_a_fitted_model_recovers_a_known_rule_and_is_calibrated_on_held_out_rows() -> None:
    rng = random.Random(3)

    def rows(n: int) -> tuple[list[list[float]], list[float]]:
        xs, ys = [], []
        for _ in range(n):
            similarity = rng.random()
            truth = 1 / (1 + math.exp(-(12 * similarity - 8)))  # as good as strong when close
            xs.append([1.0, similarity])
            ys.append(float(rng.random() < truth))
        return xs, ys

    train_x, train_y = rows(3000)
    weights = fit_logistic(train_x, train_y, l2=0.1)
    test_x, test_y = rows(2000)
    probabilities = [1 / (1 + math.exp(-(weights[0] + weights[1] * x[1]))) for x in test_x]
    checked = calibration(probabilities, test_y)

    assert weights[1] == pytest.approx(12, rel=0.2) and weights[0] == pytest.approx(-8, rel=0.2)
    assert checked.auc is not None and checked.auc > 0.85
    assert all(abs(predicted - observed) < 0.1 for predicted, observed, n in checked.bins if n >= 100)
    assert sum(n for _, _, n in checked.bins) == 2000


def test_a_reused_answer_ties_only_where_it_is_right_too_or_says_the_same() -> None:
    """Two wrong answers score the same (0) under exact match; serving one written for another question is
    still not as good as the strong tier's own, unless both say the same thing."""
    assert reuse_label(1.0, 0.0, "Paris", "Lyon") == 1.0  # better than the strong tier's
    assert reuse_label(0.0, 1.0, "Lyon", "Paris") == 0.0  # worse
    assert reuse_label(1.0, 1.0, "Paris", "paris.") == 1.0  # both right
    assert reuse_label(0.0, 0.0, "1912", "Thomas Jefferson") == 0.0  # both wrong, about different things
    assert reuse_label(0.0, 0.0, "card_arrival", "Card arrival") == 0.0  # different words: not the same
    assert reuse_label(0.0, 0.0, "Card arrival", "card arrival!") == 1.0  # both wrong, the same answer


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [(0, 10, (0.0, 0.2775)), (5, 10, (0.2366, 0.7634)), (10, 10, (0.7225, 1.0)), (0, 0, (0.0, 1.0))],
)
def test_the_wilson_interval_matches_its_published_values(
    successes: int, n: int, expected: tuple[float, float]
) -> None:
    assert wilson_interval(successes, n) == pytest.approx(expected, abs=1e-4)


def test_the_reliability_plot_is_written_for_each_choice(tmp_path: Path) -> None:
    rng = random.Random(3)
    probabilities = [rng.random() for _ in range(300)]
    labels = [float(rng.random() < p) for p in probabilities]
    checked = {"reuse": calibration(probabilities, labels), "cheap+examples": calibration(probabilities, labels)}

    written = plot_reliability(checked, "two choices", tmp_path / "reliability.png")

    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written.stat().st_size > 10_000
