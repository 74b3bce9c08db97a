"""Plain data that flows through the core: examples, candidates, decisions and outcomes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar

Vector = Sequence[float]
Message = Mapping[str, Any]
_Record = TypeVar("_Record")


@dataclass(frozen=True)
class Example:
    """A past request and the answer a strong tier gave it, kept to be shown to later requests."""

    id: str
    prompt: str
    answer: str
    source_tier: str
    quality: float
    created_at: float
    # Judged uses: cheaper-tier answers with it in the prompt that feedback scored, and their scores summed.
    uses: int = 0
    offload_successes: float = 0.0
    # Replay priority G: moving average of (1 − quality of a request it served) × relative cost of the
    # tier that served it. High G: reused often, yet the big model or poor answers were still needed.
    gain: float = 0.0
    replays: int = 0
    # Times it was selected for a request, shown to a cheaper tier or passed over: how often it matters.
    selected: int = 0
    # Successful offloads it enabled, decayed ×0.9 per hour; `value_at` is when it was last brought up to date.
    value: float = 0.0
    value_at: float = 0.0
    # The system messages it was answered under ("" for none): replay and coverage ask with them.
    instructions: str = ""
    # The key of the whole context it was answered in (`core.requests.context_key`): it serves only
    # requests under the same key. Entries kept before the key existed have "" and serve none.
    context: str = ""
    # Who admitted it (the caller's identity within the tenant, or how it came in) and from which request.
    admitted_by: str = ""
    origin: str = ""

    @property
    def offload_rate(self) -> float:
        """Laplace-smoothed share of judged cheap-tier answers that went well when this example was shown."""
        return (self.offload_successes + 1.0) / (self.uses + 2.0)


class InvalidChange(ValueError):
    """A store `modify` change that would move an example to another id or prompt (a caller's bug)."""


def checked_change(example: Example, change: Callable[[Example], Example]) -> Example:
    """Apply a store `modify` change, refusing one that would move the example to another id or prompt."""
    changed = change(example)
    if (changed.id, changed.prompt) != (example.id, example.prompt):
        raise InvalidChange("modify may change an example's answer and counters, not its id or prompt")
    return changed


@dataclass(frozen=True)
class Candidate:
    """Stage 1: an example found near the query, with its cosine similarity (higher = closer)."""

    example: Example
    similarity: float
    embedding: Vector | None = None


@dataclass(frozen=True)
class ScoredExample:
    """Stage 2: a candidate with its estimated utility for this request and the features behind it."""

    candidate: Candidate
    utility: float
    features: Mapping[str, float]
    tokens: int = 0


@dataclass(frozen=True)
class ChatRequest:
    """What a door hands the engine: who asks, which model they named, and the conversation."""

    tenant: str
    model: str
    messages: Sequence[Message]
    has_tools: bool = False
    # The generation parameters the caller set (the body less model, messages and metadata): some pass
    # the request through, some keep its answer out of the cache (`core.generation_params`).
    params: Mapping[str, Any] = field(default_factory=dict)
    # Who asks within the tenant (a key or user id), kept with an example it admits; "" when unknown.
    caller: str = ""
    # The model allow-lists the caller's credentials carry (a key's, its team's): a tier is a candidate
    # only if every list admits it (fnmatch patterns, as LiteLLM's wildcards). None or empty: no limit.
    allowed_models: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class TierScore:
    """One tier's terms in S_i = μ_i − cost term − load bias (DESIGN.md §2.5)."""

    tier: str
    quality: float
    alpha: float
    beta: float
    cost: float
    load: float
    capacity: float
    cost_penalty: float
    load_penalty: float
    score: float
    # The quality target's bias on the strongest tier's score (0 without a target; older decisions lack it).
    target_bias: float = 0.0
    # What this choice would take, for `explain` (older decisions lack them): seconds until its answer
    # (the requests ahead at the tier's measured latency, over its slots, then its own), and the price of the
    # prompt it would be sent (the examples included where the tier gets them) at the tier's input price.
    expected_s: float | None = None
    prompt_usd: float | None = None
    # What `load` and `capacity` count (`routing.load_signal`): requests for queue and ema; for delay, the
    # seconds charged and the latency target (older decisions lack it and were queue or ema).
    load_signal: str = "queue"
    # Whether the load bias hit `routing.max_load_penalty`, the most quality load may cost a tier.
    load_penalty_capped: bool = False


@dataclass(frozen=True)
class ExampleTrace:
    """What the decision log keeps of each example it used."""

    id: str
    prompt: str
    similarity: float
    utility: float
    features: Mapping[str, float]
    tokens: int


# reuse: served the nearest cached answer as it is, without calling a model (`core.reuse`).
Action = Literal["route", "reuse", "pass_through", "fail_open"]


@dataclass
class Decision:
    """Why a request went where it went; kept under its request id for `echolm explain`."""

    request_id: str
    tenant: str
    created_at: float
    requested_model: str
    action: Action
    reason: str
    tier: str
    query: str = ""
    bucket: str = ""
    augmentation: str = ""
    examples: list[ExampleTrace] = field(default_factory=list)
    candidates_considered: int = 0
    scores: list[TierScore] = field(default_factory=list)
    best_similarity: float | None = None
    # Whether the caller may be shown it (requests.best_similarity_header): a caller who reads it can
    # tell whether a teammate asked something alike. Metrics and `explain` always have it.
    similarity_shown: bool = False
    example_tokens: int = 0
    # The prompt tokens the chosen tier was sent, examples included (0: not routed, or kept before it was).
    prompt_tokens: int = 0
    overhead_ms: float = 0.0
    # Examples selected for a cheaper tier, but the request went to the strongest: their replay gain grows.
    passed_over: list[str] = field(default_factory=list)
    instructions: str = ""
    # The context key examples were looked up under and an answer would be kept under.
    context: str = ""
    # Why the answer may not become an example whatever comes back ("" when it may): shaping parameters.
    not_cached: str = ""
    # Earlier turns of the conversation (system messages aside): a replay cannot ask them again.
    history_turns: int = 0
    caller: str = ""
    # The reuse choice (`core.reuse`): the offload model's inputs and its estimate that the nearest cached
    # answer is as good as the strongest tier's (None: not estimated), and the example served when reused.
    reuse_features: list[float] = field(default_factory=list)
    reuse_probability: float | None = None
    reused_example: str = ""
    # The cheaper tier the router chose that the cached answer was served in place of ("": reused on its own
    # bar, routing.reuse.min_probability, before any tier was scored).
    reuse_stands_in_for: str = ""
    # Tiers the router left out because their calls had just failed (`core.tier_health`).
    left_out_failing: list[str] = field(default_factory=list)
    # The tenant's utility threshold when the examples were chosen (None: no examples were looked for), and,
    # where the request's best example lay in the band explored below it (`core.example_threshold`), the
    # band's lower edge and the request's arm: "shown" (explored) or "hidden" (the comparison).
    threshold: float | None = None
    threshold_band: float | None = None
    threshold_arm: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        values = dict(data)
        if "chosen_tier" in values:  # its old name, in decisions kept before the rename
            values["tier"] = values.pop("chosen_tier")
        values["examples"] = [_known(ExampleTrace, item) for item in values.get("examples", [])]
        values["scores"] = [_known(TierScore, item) for item in values.get("scores", [])]
        return _known(cls, values)


def _known(kind: type[_Record], values: Mapping[str, Any]) -> _Record:
    """`kind` from the fields it has: one a newer version wrote (workers mid-upgrade share a state database)
    is left out rather than failing the read."""
    names = {item.name for item in fields(kind)}  # type: ignore[arg-type]
    return kind(**{name: value for name, value in values.items() if name in names})


@dataclass(frozen=True)
class Prepared:
    """The engine's answer to a door: the tier (model group) to call and the messages to send it.

    A routed request counts as load on its tier until the door calls `Engine.record` or `Engine.release`.
    """

    decision: Decision
    tier: str
    messages: list[dict[str, Any]]
    # The cached answer to serve as it is, without calling the tier (a reuse decision); None otherwise.
    reused_answer: str | None = None
    # Its tokens as counted for the usage a door reports: (prompt, completion).
    reused_usage: tuple[int, int] = (0, 0)

    @property
    def routed(self) -> bool:
        return self.decision.action == "route"

    @property
    def reused(self) -> bool:
        return self.decision.action == "reuse" and self.reused_answer is not None


@dataclass(frozen=True)
class Outcome:
    """What came back from the tier, as the door saw it after the response (or stream) completed."""

    request_id: str
    served_by: str
    answer: str
    finish_reason: str | None = None
    latency_s: float | None = None
    # Why the answer is not whole though it came back ("" when nothing says so): the client hung up, the
    # stream ended without the upstream's finish reason. Such an answer is never cached.
    cut_short: str = ""
    # The tier declined to answer (OpenAI's `refusal` field): never cached either.
    refused: bool = False


RecordResult = Literal["admitted", "offload_counted", "reuse_counted", "skipped", "duplicate"]


@dataclass(frozen=True)
class Completion:
    """One answer a tier gave the upkeep (not a user request), with what it cost."""

    text: str
    finish_reason: str | None
    tokens: int  # prompt + completion, as the tier reported them
    cost_usd: float | None = None
