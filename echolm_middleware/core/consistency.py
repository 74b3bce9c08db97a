"""Self-consistency: of several sampled answers to one question, keep the one the others agree with most.

The upkeep's replay asks the strongest tier `upkeep.samples` times (the first greedy, the rest sampled)
and keeps the medoid: the answer whose embedding has the highest summed cosine similarity to all the
answers'. Where the samples mostly agree, that is the majority answer; a lone stray sample is never kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def most_agreed(vectors: Sequence[Sequence[float]]) -> int:
    """The index of the medoid among unit `vectors` (one per answer); ties go to the earliest answer, so with
    the greedy answer first a split vote keeps the greedy one."""
    if not vectors:
        raise ValueError("no answers to choose from")
    # Plain Python (the core does not need numpy): at most five answers (`upkeep.samples`).
    agreement = [math.fsum(math.fsum(a * b for a, b in zip(v, w, strict=True)) for w in vectors) for v in vectors]
    best = max(agreement)
    # The first within float noise of the best: equal answers embed to equal vectors, and a tie keeps the
    # earlier answer (the greedy one) rather than whichever rounding favoured.
    return next(index for index, value in enumerate(agreement) if value >= best - 1e-9)
