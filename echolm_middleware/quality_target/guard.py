"""The engine's side of the quality target: which cheap-tier requests are compared, and with what."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from echolm_middleware.core.types import Message
from echolm_middleware.quality_target.controller import QualityTarget
from echolm_middleware.quality_target.shadow import Shadow

# Sampled requests waiting for their answer; the oldest are forgotten (their answer never came).
_MAX_PENDING_SAMPLES = 4096


class QualityGuard:
    """Implements the core's `QualityCheck` port over the controller and the shadow comparisons."""

    def __init__(self, controller: QualityTarget, shadow: Shadow) -> None:
        self.controller = controller
        self._shadow = shadow
        self._lock = threading.Lock()
        # Per sampled request: its messages, and whether it is of the sampled share (its score moves the bias).
        self._sampled: OrderedDict[str, tuple[list[dict[str, Any]], bool]] = OrderedDict()

    def strongest_bias(self) -> float:
        return self.controller.bias

    def sample(self, request_id: str, messages: Sequence[Message], *, always: bool = False) -> None:
        """Keep the request as the caller sent it (no examples), if it is one of the sampled share. `always`
        keeps it whatever the share (the threshold's trial); its score then moves the bias only if the share's
        draw picked it too, so the bias follows an even sample of the cheaper tiers' answers."""
        of_the_share = self.controller.should_compare()
        if not (always or of_the_share):
            return
        with self._lock:
            self._sampled[request_id] = ([dict(message) for message in messages], of_the_share)
            while len(self._sampled) > _MAX_PENDING_SAMPLES:
                self._sampled.popitem(last=False)

    def compare(
        self,
        request_id: str,
        answer: str,
        *,
        comparable: bool,
        evidence: Callable[[float], None] | None = None,
        moves_bias: bool = True,
    ) -> None:
        """Hand a sampled cheap-tier answer to the shadow comparison; its score later moves the bias (unless
        not `moves_bias`: a reused answer, whose own model learns from it instead) and is passed to
        `evidence` (the examples the answer used, or the reuse model)."""
        with self._lock:
            sampled = self._sampled.pop(request_id, None)
        if sampled is None or not comparable:
            return
        messages, of_the_share = sampled
        controller = self.controller

        def observe(score: float) -> None:
            if moves_bias and of_the_share:
                controller.observe(score)
            if evidence is not None:
                evidence(score)

        self._shadow.submit(messages, answer, observe)
