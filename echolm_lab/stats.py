"""One percentile rule for every latency and overhead figure the lab reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), numpy's default rule (linear between the closest ranks); None for none."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None
