"""Typed configuration: the `echolm` section of config.yaml, with `ECHOLM_` environment overrides.

Only this module reads files or the environment. Each component receives its own sub-settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from echolm_middleware.errors import ConfigError

CONFIG_SECTION = "echolm"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierSettings(_Strict):
    """One tier: a LiteLLM model group, with what it costs and how much load it takes."""

    name: str = Field(min_length=1, description="LiteLLM model group that serves this tier.")
    cost_per_1k_tokens: float | None = Field(
        default=None, ge=0, description="Blended price; None = take it from litellm's cost data."
    )
    capacity: float = Field(default=2.0, gt=0, description="In-flight requests above which load shifts away.")
    max_input_tokens: int = Field(default=2048, gt=0, description="Context window used to refuse oversize prompts.")
    quality_prior: float = Field(
        default=0.5, gt=0, lt=1, description="Prior quality of this tier without examples (0-1)."
    )
    tokenizer: str | None = Field(
        default=None,
        description=(
            "What counts this tier's tokens: unset = LiteLLM's counter for its deployment's model; "
            "'litellm:<model>', 'gguf:<path to the model file>' or 'tokenizer-json:<path>'."
        ),
    )


class UtilityWeights(_Strict):
    """Logistic weights of the stage-2 utility score; fitted online from feedback."""

    bias: float = -10.3
    similarity: float = 11.0
    quality: float = 1.0
    source: float = 0.5
    offload: float = 1.0
    age: float = 0.3


class DynamicThresholdSettings(_Strict):
    """Each tenant's utility threshold lowered band by band where its evidence says examples below it help
    (`core.example_threshold`)."""

    enabled: bool = Field(
        default=True,
        description="Explore the band below each tenant's threshold and lower the threshold where the evidence says "
        "so. Inert for a tenant with no evidence coming in (no feedback, no quality target).",
    )
    explore_share: float = Field(
        default=0.1, gt=0, le=0.5,
        description="Of the requests whose most useful example lies in the band just below the tenant's threshold, "
        "the share in each arm of the trial: shown it, or not, both sent to the cheapest tier (the rest are routed "
        "as usual).",
    )  # fmt: skip
    step: float = Field(
        default=0.2, ge=0.01, le=1,
        description="Width of a band: how far the threshold moves at once (the state keeps bands to 0.01).",
    )  # fmt: skip
    lowest: float = Field(default=0.1, ge=0, le=1, description="The threshold is never lowered below this.")
    min_evidence: int = Field(default=30, ge=1, description="Scored answers each arm needs before the band can pass.")
    max_evidence: int = Field(
        default=300, ge=1,
        description="Scored answers in each arm after which a band that has not passed is explored no more (the "
        "examples there were given their chance; the trial's cost stays bounded).",
    )  # fmt: skip
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1, description="How sure the shown arm must be to beat the hidden one."
    )

    @model_validator(mode="after")
    def _evidence_bounds(self) -> DynamicThresholdSettings:
        if self.max_evidence < self.min_evidence:
            raise ValueError(f"max_evidence ({self.max_evidence}) is below min_evidence ({self.min_evidence})")
        return self


class RetrievalSettings(_Strict):
    candidates: int = Field(default=20, ge=1, le=200, description="Stage-1 nearest neighbours fetched.")
    k: int = Field(default=3, ge=0, le=5, description="Most examples prepended.")
    threshold: float = Field(
        default=0.5, ge=0, le=1, description="Least utility an example needs (each tenant's start: see `dynamic`)."
    )
    dynamic: DynamicThresholdSettings = DynamicThresholdSettings()
    max_example_tokens: int = Field(default=600, ge=0, description="Prompt-token budget for all examples.")
    near_duplicate_similarity: float = Field(
        default=0.97, ge=0, le=1, description="Two examples at least this similar are one example."
    )
    one_example_similarity: float | None = Field(
        default=0.95,
        ge=0,
        le=1,
        description="Show the most useful example alone when it is at least this similar to the request (None: "
        "never). Chosen on Banking77's train items: at 0.95 one example beat the default selection by 5.2 points "
        "(+1.2 to +9.9) in half the cheap tier's time (README 'Shorter examples').",
    )
    age_half_life_days: float = Field(default=30.0, gt=0)
    weights: UtilityWeights = UtilityWeights()
    learning_rate: float = Field(default=0.05, ge=0, le=1, description="Step of the online weight fit.")


class AugmentationSettings(_Strict):
    format: Literal["inline", "few_shot"] = "inline"
    max_answer_chars: int = Field(default=1200, ge=1, description="Longer cached answers are cut when prepended.")


class QualityTargetSettings(_Strict):
    """Hold the cheap tiers' answers at `target` of the strongest's, measured on a sampled share of them."""

    target: float = Field(ge=0, le=1, description="Least comparison score to hold (0-1).")
    metric: Literal["agreement", "judge"] = Field(
        default="agreement",
        description="agreement: token F1 against the strongest's answer (short answers); judge: pairwise "
        "win rate with the strongest tier as judge (open-ended answers).",
    )
    sample_share: float = Field(default=0.05, gt=0, le=1, description="Cheap-tier answers also asked of the strongest.")
    step: float = Field(default=0.05, gt=0, le=1, description="Bias moved per comparison point of shortfall.")
    max_bias: float = Field(default=0.5, gt=0, le=2, description="Largest bias either way on the strongest's score.")
    max_answer_tokens: int = Field(default=256, ge=1, description="Answer length asked of the strongest tier.")


class ReuseSettings(_Strict):
    """Serve the nearest cached answer as it is, without calling a model, where the offload model says it is
    as good as a fresh answer from the strongest tier (`core.offload_model`, `core.reuse`)."""

    enabled: bool = Field(
        default=True,
        description="Take the reuse choice at all (on by default: non-inferior to strong-only on the lab's three "
        "answers tables with the default weights and bar; README 'Reuse').",
    )
    min_probability: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Least P(the cached answer is as good as the strongest tier's) to reuse it (core.reuse "
        "REUSE_MIN_PROBABILITY: chosen with the default weights on the lab's training pools).",
    )
    stand_in: bool = Field(
        default=True,
        description="Reuse as an arm of the router: where it sends a request to a cheaper tier (load, or the "
        "examples), serve the nearest cached answer instead if its expected quality (P times the strongest "
        "tier's) is at least that tier's; it costs no inference and adds no load. False: only min_probability.",
    )
    weights: list[float] | None = Field(
        default=None,
        description="Logistic weights over core.offload_model.FEATURES; None: the defaults fitted on the lab's "
        "training data (core.reuse REUSE_WEIGHTS).",
    )
    learning_rate: float = Field(
        default=0.05, ge=0, le=1, description="Step of the online fit from feedback and quality-target comparisons."
    )
    model_group: str | None = Field(
        default=None,
        description="LiteLLM model group a reused answer is logged under (a zero-priced group, so spend logs "
        "show it free); None: the model the caller named, priced at its rate.",
    )


class RoutingSettings(_Strict):
    policy: Literal["mean", "thompson"] = "mean"
    cost_weight: float = Field(
        default=0.1, ge=0, description="Quality points traded for going from the dearest to a free tier."
    )
    load_lambda: float = Field(
        default=0.5,
        ge=0,
        description=(
            "λ0, the quality load costs: λ0 per latency_target_s of delay charged (delay), or the scale of"
            " the bias λ0·tanh(γ·(L−cap))⁺·C, at most λ0·C (queue, ema)."
        ),
    )
    load_gamma: float = Field(default=1.0, gt=0, description="γ of the load bias (queue, ema).")
    max_load_penalty: float = Field(
        default=1.0,
        ge=0,
        description=(
            "The most quality load may cost a tier, whatever its queue: a long queue never outweighs"
            " everything else, so a quality target's bias (max_bias at least this) can always hold a request on"
            " the strongest tier, and a request whose cheaper choices are predicted worse than the strongest by"
            " more than this is never shed. At 0.4, a request no example helps (0.3 against 0.8 with the default"
            " priors) stays on the strongest tier however long its queue."
        ),
    )
    load_signal: Literal["queue", "ema", "delay"] = Field(
        default="delay",
        description=(
            "The load L a request is routed on. delay: the seconds of delay it would meet there, charged"
            " load_lambda per latency_target_s whatever the tier's price: the wait behind the requests ahead of"
            " it (at the tier's measured latency, over its capacity) in full, and its own answer (predicted"
            " from the prompt tokens it would read, examples included) only beyond latency_target_s. queue:"
            " requests in flight on the tier counting this one, charged above capacity and scaled by the"
            " tier's relative cost; ema: the moving average of requests in flight (smoother, lags a burst)."
        ),
    )
    latency_target_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "load_signal delay: the seconds of wait that cost load_lambda of quality; a request's own answer"
            " is charged only for its time beyond this."
        ),
    )
    latency_prior_s: float = Field(
        default=1.0, gt=0, description="load_signal delay: a tier's latency until its answers have been timed."
    )
    load_window_s: float = Field(default=2.0, gt=0, description="Time constant of the in-flight moving average.")
    load_stale_after_s: float = Field(
        default=600.0, gt=0, description="A request whose end was never reported stops counting as load after this."
    )
    failing_tier_cooldown_s: float = Field(
        default=5.0,
        ge=0,
        description=(
            "A tier whose call failed for a reason of its own (no connection, a timeout, a 5xx, 429, 401, 403 or"
            " 404) is left out of routing this long; then the next request routed to it tries it, and each"
            " failed try doubles the time out (core.tier_health). 0: a failing tier is never left out."
        ),
    )
    failing_tier_max_cooldown_s: float = Field(
        default=60.0, gt=0, description="The longest a failing tier is left out between tries."
    )
    prior_strength: float = Field(default=10.0, gt=0, description="Pseudo-observations behind each prior.")
    posterior_refresh_s: float = Field(
        default=10.0,
        ge=0,
        description=(
            "How often the router re-reads what it has learned (each tier's posterior per context bucket and"
            " tenant) from the state, where every worker adds its feedback and comparisons: another worker's"
            " evidence reaches this one within this many seconds. 0: on every request."
        ),
    )
    example_uplift: float = Field(
        default=0.9, ge=0, le=1, description="Share of a tier's quality gap closed by a perfect example."
    )
    quality_target: QualityTargetSettings | None = Field(
        default=None, description="Adjust the operating point on live traffic to hold this quality (off: None)."
    )
    reuse: ReuseSettings = ReuseSettings()


class AdmissionSettings(_Strict):
    initial_quality: float = Field(default=0.8, ge=0, le=1)
    min_quality: float = Field(default=0.5, ge=0, le=1, description="Quality bar an answer must clear.")
    min_answer_chars: int = Field(default=1, ge=1)
    max_answer_chars: int = Field(default=4000, ge=1)
    max_prompt_chars: int = Field(default=4000, ge=1)
    max_temperature: float = Field(
        default=1.0, ge=0, description="Answers sampled at a higher temperature the caller set are not cached."
    )
    refuse_instructions: bool = Field(
        default=True,
        description=(
            "Do not cache, or show as an example, an answer that reads like instructions to a model (prompt"
            " injection such as 'ignore previous instructions')."
        ),
    )
    pii: Literal["keep", "scrub", "refuse"] = Field(
        default="keep",
        description=(
            "Emails, phone and card numbers and API keys in a pair about to be cached: keep them, scrub them"
            " (typed placeholders such as [EMAIL]) or refuse to cache the pair."
        ),
    )


class StoreSettings(_Strict):
    backend: Literal["chroma", "memory"] = "chroma"
    path: Path = Path(".echolm/chroma")
    server_url: str | None = Field(default=None, description="http://host:port of a `chroma run` server.")
    collection_prefix: str = Field(default="echolm", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,20}$")
    batch_size: int = Field(default=64, ge=1)
    server_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Per-call budget against a Chroma server; past it the call fails (chromadb waits forever).",
    )


class EmbedderSettings(_Strict):
    backend: Literal["minilm"] = "minilm"
    threads: int = Field(default=1, ge=1)
    runtime: Literal["onnx", "torch"] = Field(
        default="onnx",
        description="What embeds: ONNX Runtime (the same weights, exported once and kept in onnx_cache_dir; "
        "PyTorch where onnx/onnxruntime are missing or the graph fails its check) or PyTorch.",
    )
    onnx_cache_dir: Path | None = Field(
        default=Path("~/.cache/echolm-middleware/onnx"),
        description="Where the exported graph is kept for the next process, which then starts without "
        "PyTorch (about 9 s sooner); None: export in every process and keep nothing on disk.",
    )


class StateSettings(_Strict):
    backend: Literal["sqlite", "memory"] = "sqlite"
    path: Path = Path(".echolm/state.db")
    retention_days: float = Field(default=7.0, gt=0, description="Decisions older than this are deleted.")
    busy_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="How long a write waits for another process's; keep it under requests.timeout_ms.",
    )


class CoordinationSettings(_Strict):
    """What proxy workers share beyond the store: per-tier load and the upkeep's lock (DESIGN.md §4)."""

    redis_url: str | None = Field(
        default=None,
        pattern=r"^(redis|rediss|unix)://",
        description="redis://host:port/db of a Redis or Valkey server; None keeps both in this process.",
    )
    key_prefix: str = Field(default="echolm", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_:-]{0,40}$")
    timeout_s: float = Field(
        default=0.05, gt=0, le=5, description="Per-command budget; past it this worker routes on its own load."
    )
    retry_after_s: float = Field(
        default=2.0, gt=0, description="After a failed command, how long to route on local load before trying again."
    )


class RequestSettings(_Strict):
    """How each request is handled before it reaches a tier (section `requests`; `proxy` is its old name)."""

    timeout_ms: float = Field(default=2000, gt=0, description="Budget of our pre-call work; past it, fail open.")
    max_messages: int = Field(default=256, ge=1, description="Longer conversations pass through untouched.")
    max_kept_chars: int = Field(
        default=16_000,
        ge=100,
        description=(
            "Longest question or system prompt a decision keeps; a longer one is kept cut, and its answer is"
            " not cached (an example needs its whole context)."
        ),
    )
    query_context_turns: int = Field(default=0, ge=0, description="Earlier user turns added to the query.")
    best_similarity_header: bool = Field(
        default=False,
        description=(
            "Send x-echolm-best-similarity (and best_similarity in the body). Off: within a tenant it tells"
            " a caller whether a teammate asked something alike."
        ),
    )


class TenancySettings(_Strict):
    """Who shares a cache. The tenant is a request's authenticated identity: its LiteLLM team, else its
    user, else its virtual key (proxy); the `echolm_tenant` the application names (Router, LangChain)."""

    shared: bool = Field(
        default=False,
        description=(
            "Requests with no identity (the proxy's master key, a proxy without one, a Router or LangChain"
            " call naming no tenant) share one cache, tenant 'shared'. Off: they pass through untouched."
        ),
    )


class UpkeepSettings(_Strict):
    """Cost-aware replay, coverage of misses and eviction (see README "Keeping the cache useful")."""

    gain_alpha: float = Field(default=0.2, gt=0, le=1, description="Step of the replay gain's moving average.")
    schedule_minutes: float | None = Field(
        default=None, gt=0, description="Run a pass every so many minutes in the proxy; None = only `echolm upkeep`."
    )
    budget_tokens: int = Field(default=20_000, ge=0, description="Strong-tier tokens one pass may spend.")
    budget_usd: float | None = Field(
        default=None, ge=0, description="Money one pass may spend, priced by litellm's cost data; None = tokens only."
    )
    samples: int = Field(default=1, ge=1, le=5, description="Strong-tier answers per replayed request; best kept.")
    keep: Literal["agreement", "judge"] = Field(
        default="judge",
        description=(
            "Of several samples, keep the one the others agree with most, or the one the strongest tier names"
            " among the different answers (one more call; its unreadable reply keeps the most given answer)."
        ),
    )
    max_replays: int = Field(default=5, ge=1, description="An example replayed this often is not replayed again.")
    horizon_days: float = Field(default=7.0, gt=0, description="How far ahead a replay must pay back its cost.")
    max_answer_tokens: int = Field(default=256, ge=1, description="Answer length asked of the strong tier.")
    coverage_window_hours: float = Field(default=24.0, gt=0, description="How far back misses are gathered.")
    coverage_similarity: float = Field(default=0.8, gt=0, le=1, description="Misses this close form one cluster.")
    coverage_min_cluster: int = Field(default=2, ge=1, description="Smallest cluster of misses worth answering.")
    ttl_days: float | None = Field(default=30.0, gt=0, description="Examples older than this are evicted.")
    max_entries: int | None = Field(default=100_000, ge=1, description="Entry budget per tenant.")
    max_bytes: int | None = Field(default=None, ge=1, description="Byte budget per tenant (texts + vector).")
    evict_every_minutes: float | None = Field(
        default=60.0,
        gt=0,
        description=(
            "Without schedule_minutes, the proxy still applies ttl_days and the budgets this often (no model"
            " calls); None: only in upkeep passes."
        ),
    )


class Settings(BaseSettings):
    """Everything echolm-middleware reads; defaults suit a single embedded-Chroma proxy."""

    model_config = SettingsConfigDict(env_prefix="ECHOLM_", env_nested_delimiter="__", extra="forbid", frozen=True)

    tiers: tuple[TierSettings, ...] = Field(min_length=1)
    retrieval: RetrievalSettings = RetrievalSettings()
    augmentation: AugmentationSettings = AugmentationSettings()
    routing: RoutingSettings = RoutingSettings()
    admission: AdmissionSettings = AdmissionSettings()
    store: StoreSettings = StoreSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    state: StateSettings = StateSettings()
    coordination: CoordinationSettings = CoordinationSettings()
    # Every door reads it, not only the proxy: `proxy` is still accepted, in config files and as ECHOLM_PROXY__*.
    # A field with an alias takes its environment variable from the alias, without the env prefix:
    # "echolm_requests" is what makes ECHOLM_REQUESTS__TIMEOUT_MS work like every other section's.
    requests: RequestSettings = Field(
        default=RequestSettings(), validation_alias=AliasChoices("requests", "proxy", "echolm_requests")
    )
    upkeep: UpkeepSettings = UpkeepSettings()
    tenancy: TenancySettings = TenancySettings()

    @model_validator(mode="after")
    def _unique_tier_names(self) -> Settings:
        names = [tier.name for tier in self.tiers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"tier names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _few_shot_needs_the_screen(self) -> Settings:
        # Few-shot turns cannot be fenced as data: cached text becomes conversation turns of their own,
        # so only screened text may go there.
        if self.augmentation.format == "few_shot" and not self.admission.refuse_instructions:
            raise ValueError(
                "augmentation.format few_shot needs admission.refuse_instructions: true (turns cannot be"
                " fenced as data); use inline to show unscreened examples"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment must win over the file.
        return (env_settings, init_settings)

    def stored_under(self, directory: Path) -> Settings:
        """The same settings with the store at `directory`/chroma and the state at `directory`/state.db."""
        store = self.store.model_copy(update={"path": directory / "chroma"})
        state = self.state.model_copy(update={"path": directory / "state.db"})
        return self.model_copy(update={"store": store, "state": state})

    def resolve_paths(self, base: Path) -> Settings:
        """Relative store, state and embedder-cache paths are relative to the config file, not the process's
        cwd (`~` is the user's home)."""
        store = self.store.model_copy(update={"path": _under(base, self.store.path)})
        state = self.state.model_copy(update={"path": _under(base, self.state.path)})
        kept = self.embedder.onnx_cache_dir
        embedder = self.embedder.model_copy(
            update={"onnx_cache_dir": None if kept is None else _under(base, kept.expanduser())}
        )
        return self.model_copy(update={"store": store, "state": state, "embedder": embedder})


def _under(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path


def read_config_file(path: Path) -> dict[str, Any]:
    """The whole YAML file as a mapping (LiteLLM's sections included)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def settings_from_mapping(section: Mapping[str, Any] | None) -> Settings:
    """Validate an `echolm` section (env overrides applied) into Settings, or raise ConfigError."""
    if section is not None and not isinstance(section, Mapping):
        raise ConfigError(f"{CONFIG_SECTION}: must be a mapping")
    try:
        return Settings(**dict(section or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc


def load_settings(path: Path) -> tuple[Settings, dict[str, Any]]:
    """Settings from the `echolm` section of a config file, plus the whole file for LiteLLM's parts."""
    data = read_config_file(path)
    settings = settings_from_mapping(data.get(CONFIG_SECTION))
    return settings.resolve_paths(path.resolve().parent), data


def model_groups_in(config: Mapping[str, Any]) -> set[str]:
    """The LiteLLM model groups (`model_name`s) a proxy config declares."""
    groups = set()
    for entry in config.get("model_list") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("model_name"), str):
            groups.add(entry["model_name"])
    return groups


def check_tiers_exist(settings: Settings, model_groups: Iterable[str]) -> None:
    """Stop start-up when a tier names no model group; the message names the key."""
    known = set(model_groups)
    for index, tier in enumerate(settings.tiers):
        if tier.name not in known:
            raise ConfigError(
                f"{CONFIG_SECTION}.tiers[{index}].name: {tier.name!r} names no model group in model_list "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )


def check_reuse_group_exists(routing: RoutingSettings, model_groups: Iterable[str]) -> None:
    """Stop start-up when reused answers are to be logged under a model group LiteLLM does not have."""
    group = routing.reuse.model_group
    if routing.reuse.enabled and group is not None and group not in set(model_groups):
        raise ConfigError(
            f"{CONFIG_SECTION}.routing.reuse.model_group: {group!r} names no model group in model_list; add a"
            " zero-priced entry for it (see config.yaml) or leave it unset to log reuse under the model named"
        )


def config_path_from_env() -> Path | None:
    """ECHOLM_CONFIG: the file holding the `echolm` section, when the host does not say."""
    value = os.environ.get("ECHOLM_CONFIG")
    return Path(value) if value else None


def static_keys_from_env() -> dict[str, str]:
    """ECHOLM_STATIC_KEYS="key=team,key2=team2": API keys and their teams for a proxy without a database."""
    pairs = {}
    for item in os.environ.get("ECHOLM_STATIC_KEYS", "").split(","):
        key, sep, team = item.strip().partition("=")
        if sep and key and team:
            pairs[key] = team
    return pairs


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        location = ".".join(str(part) for part in (CONFIG_SECTION, *error["loc"]))
        reason = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"{location}: {reason}")
    return "invalid echolm configuration:\n  " + "\n  ".join(lines)
