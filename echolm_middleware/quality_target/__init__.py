"""The quality target, in one place: hold a chosen agreement with the strongest tier on live traffic.

- `controller`: the bias on the strongest tier's routing score, moved by each comparison (pure).
- `guard`: what the engine talks to (the core's `QualityCheck` port): samples cheap-tier requests, hands
  their answers to the shadow comparisons and feeds the scores to the controller.
- `shadow`: asks the strongest tier the sampled request again, off the request path, and scores the pair
  by `answer_match` (token F1) or by the `judge` (an LLM judge's pairwise verdict).

`routing.quality_target` in the settings turns it on; `build_quality_guard` wires it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from echolm_middleware.config import QualityTargetSettings, Settings
from echolm_middleware.quality_target.controller import QualityTarget
from echolm_middleware.quality_target.guard import QualityGuard
from echolm_middleware.quality_target.shadow import Shadow


def build_quality_guard(
    settings: Settings,
    model_list: Sequence[Mapping[str, Any]],
    *,
    shadow: Shadow | None = None,
    rng: random.Random | None = None,
) -> QualityGuard | None:
    """The quality target the settings ask for (None without one): the strongest tier is called directly
    from the config's model_list unless a `shadow` is given (tests)."""
    target = settings.routing.quality_target
    if target is None:
        return None
    if shadow is None:
        if not model_list:
            return None  # nothing to ask the strongest tier through (a LangChain-only setup)
        from echolm_middleware.backends.litellm_completer import LiteLLMCompleter
        from echolm_middleware.quality_target.shadow import ShadowComparisons

        shadow = ShadowComparisons(
            LiteLLMCompleter(model_list),
            settings.tiers[-1].name,
            metric=target.metric,
            max_tokens=target.max_answer_tokens,
        )
    return guard_for(target, shadow, rng=rng)


def guard_for(target: QualityTargetSettings, shadow: Shadow, *, rng: random.Random | None = None) -> QualityGuard:
    """A quality target held by `shadow`'s comparisons."""
    controller = QualityTarget(
        target.target, step=target.step, max_bias=target.max_bias, sample_share=target.sample_share, rng=rng
    )
    return QualityGuard(controller, shadow)
