"""The quality target, in one place: hold a chosen agreement with the strongest tier on live traffic.

- `controller`: the bias on the strongest tier's routing score, moved by each comparison (pure).
- `guard`: what the engine talks to (the core's `QualityCheck` port): samples cheap-tier requests, hands
  their answers to the shadow comparisons and feeds the scores to the controller.
- `shadow`: asks the strongest tier the sampled request again, off the request path, and scores the pair
  by `answer_match` (token F1) or by the `judge` (an LLM judge's pairwise verdict).

`routing.quality_target` in the settings turns it on; the factory wires it (`build_quality_guard`).
"""

from __future__ import annotations

import random

from echolm_middleware.config import QualityTargetSettings
from echolm_middleware.quality_target.controller import QualityTarget
from echolm_middleware.quality_target.guard import QualityGuard
from echolm_middleware.quality_target.shadow import Shadow


def guard_for(target: QualityTargetSettings, shadow: Shadow, *, rng: random.Random | None = None) -> QualityGuard:
    """A quality target held by `shadow`'s comparisons."""
    controller = QualityTarget(
        target.target, step=target.step, max_bias=target.max_bias, sample_share=target.sample_share, rng=rng
    )
    return QualityGuard(controller, shadow)
