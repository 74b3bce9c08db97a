"""One percentile rule for the lab's figures: numpy's linear rule, the same in the bench, demo and soak."""

from __future__ import annotations

import pytest

from echolm_lab.stats import percentile


def test_percentiles_interpolate_between_the_closest_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
