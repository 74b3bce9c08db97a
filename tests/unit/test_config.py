"""Configuration: the repo's config.yaml, unknown keys, env overrides, tier checks and tier profiles."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from echolm_middleware.config import (
    Settings,
    TierSettings,
    check_tiers_exist,
    config_path_from_env,
    load_settings,
    model_groups_in,
    read_config_file,
    settings_from_mapping,
    static_keys_from_env,
)
from echolm_middleware.errors import ConfigError
from echolm_middleware.factory import tier_profiles

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"
TWO_TIERS = [{"name": "cheap", "cost_per_1k_tokens": 0.1}, {"name": "strong", "cost_per_1k_tokens": 2.0}]


@pytest.fixture(autouse=True)
def no_echolm_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts without ECHOLM_ variables from the surrounding shell."""
    for name in list(os.environ):
        if name.startswith("ECHOLM_"):
            monkeypatch.delenv(name)
    yield


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_the_repository_config_loads_and_names_existing_model_groups() -> None:
    settings, raw = load_settings(REPO_CONFIG)

    assert [tier.name for tier in settings.tiers] == ["cheap", "strong"]
    assert settings.store.path == REPO_CONFIG.parent / ".echolm" / "chroma"
    assert settings.state.path == REPO_CONFIG.parent / ".echolm" / "state.db"
    assert settings.store.path.is_absolute()
    assert model_groups_in(raw) == {"cheap", "strong", "echolm-cache"}
    assert settings.routing.reuse.enabled and settings.routing.reuse.model_group == "echolm-cache"
    check_tiers_exist(settings, model_groups_in(raw))
    profiles = tier_profiles(settings.tiers, raw["model_list"])
    assert [(p.name, p.rank) for p in profiles] == [("cheap", 0), ("strong", 1)]
    # Priced as LiteLLM charges them: by their deployments' input/output_cost_per_token.
    assert [p.prices.input_per_1k for p in profiles] == pytest.approx([1e-4, 2e-3])
    assert [p.prices.output_per_1k for p in profiles] == pytest.approx([1e-4, 2e-3])
    assert [p.cost for p in profiles] == pytest.approx([0.05, 1.0])


def test_the_repository_config_routes_on_delay_and_replays_one_answer_judged_when_sampled() -> None:
    """README: `load_signal: delay` with a 5 s latency target is the default; the replay asks one greedy
    answer (`samples: 1`) and, where set to sample, keeps the strong tier's pick (`keep: judge`)."""
    settings, _ = load_settings(REPO_CONFIG)

    assert (settings.routing.load_signal, settings.routing.latency_target_s) == ("delay", 5.0)
    assert (settings.upkeep.samples, settings.upkeep.keep) == (1, "judge")


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path: Path) -> None:
    path = _write(tmp_path / "echolm.yaml", {"echolm": {"tiers": TWO_TIERS, "store": {"path": "data/chroma"}}})

    settings, _ = load_settings(path)

    assert settings.store.path == tmp_path / "data" / "chroma"
    assert settings.state.path == tmp_path / ".echolm" / "state.db"
    assert settings.embedder.onnx_cache_dir == Path("~/.cache/echolm-middleware/onnx").expanduser()


def test_a_relative_embedder_cache_resolves_against_the_config_files_folder_and_none_stays_none(
    tmp_path: Path,
) -> None:
    relative = _write(tmp_path / "a.yaml", {"echolm": {"tiers": TWO_TIERS, "embedder": {"onnx_cache_dir": "kept"}}})
    nowhere = _write(tmp_path / "b.yaml", {"echolm": {"tiers": TWO_TIERS, "embedder": {"onnx_cache_dir": None}}})

    assert load_settings(relative)[0].embedder.onnx_cache_dir == tmp_path / "kept"
    assert load_settings(nowhere)[0].embedder.onnx_cache_dir is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"tiers": TWO_TIERS, "routing": {"cost_weigth": 0.2}}, "echolm.routing.cost_weigth: unknown key"),
        ({"tiers": TWO_TIERS, "retrival": {"k": 3}}, "echolm.retrival: unknown key"),
        (
            {"tiers": TWO_TIERS, "retrieval": {"weights": {"simlarity": 1}}},
            "echolm.retrieval.weights.simlarity: unknown key",
        ),
        ({"tiers": [{"name": "cheap", "capasity": 3}]}, "echolm.tiers.0.capasity: unknown key"),
    ],
)
def test_an_unknown_key_is_refused_with_its_dotted_path(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_mapping(section)

    assert message in str(raised.value)


def test_an_unknown_key_in_a_file_is_refused_with_its_dotted_path(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", {"echolm": {"tiers": TWO_TIERS, "routing": {"cost_weigth": 0.2}}})

    with pytest.raises(ConfigError, match=r"echolm\.routing\.cost_weigth: unknown key"):
        load_settings(path)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"tiers": TWO_TIERS, "routing": {"cost_weight": -1}}, "echolm.routing.cost_weight:"),
        ({"tiers": TWO_TIERS, "retrieval": {"k": 6}}, "echolm.retrieval.k:"),
        ({"tiers": TWO_TIERS, "retrieval": {"threshold": 1.5}}, "echolm.retrieval.threshold:"),
        ({"tiers": [{"name": "cheap", "quality_prior": 1.0}]}, "echolm.tiers.0.quality_prior:"),
        ({"tiers": TWO_TIERS, "augmentation": {"format": "xml"}}, "echolm.augmentation.format:"),
        ({"tiers": []}, "echolm.tiers:"),
        ({}, "echolm.tiers:"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_mapping(section)

    assert key in str(raised.value)


def test_duplicate_tier_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="repeated: cheap"):
        settings_from_mapping({"tiers": [{"name": "cheap"}, {"name": "strong"}, {"name": "cheap"}]})


def test_a_section_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ConfigError, match="echolm: must be a mapping"):
        settings_from_mapping(["tiers"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("echolm: [unclosed", "is not valid YAML"),
        ("- a list\n- at the top\n", "the top level must be a mapping"),
    ],
)
def test_unreadable_config_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError, match=message):
        read_config_file(path)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml")


def test_an_empty_file_is_an_empty_mapping(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")

    assert read_config_file(path) == {}


def test_an_env_override_wins_over_the_file_and_merges_with_its_nested_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(
        tmp_path / "c.yaml",
        {"echolm": {"tiers": TWO_TIERS, "routing": {"cost_weight": 0.1, "load_lambda": 0.7}}},
    )
    monkeypatch.setenv("ECHOLM_ROUTING__COST_WEIGHT", "0.3")
    monkeypatch.setenv("ECHOLM_STORE__SERVER_URL", "http://127.0.0.1:8000")

    settings, _ = load_settings(path)

    assert settings.routing.cost_weight == 0.3
    assert settings.routing.load_lambda == 0.7  # the file's sibling value survives the override
    assert settings.store.server_url == "http://127.0.0.1:8000"
    assert [tier.name for tier in settings.tiers] == ["cheap", "strong"]


@pytest.mark.parametrize("section", ["requests", "proxy"])
def test_every_section_takes_env_overrides_the_aliased_requests_section_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str
) -> None:
    path = _write(tmp_path / "c.yaml", {"echolm": {"tiers": TWO_TIERS, section: {"max_messages": 9}}})
    monkeypatch.setenv("ECHOLM_REQUESTS__TIMEOUT_MS", "999")
    monkeypatch.setenv("ECHOLM_REQUESTS__BEST_SIMILARITY_HEADER", "true")

    settings, _ = load_settings(path)

    assert (settings.requests.timeout_ms, settings.requests.best_similarity_header) == (999, True)
    assert settings.requests.max_messages == 9  # the file's sibling value survives


def test_an_invalid_env_override_is_a_config_error_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHOLM_RETRIEVAL__K", "99")

    with pytest.raises(ConfigError, match=r"echolm\.retrieval\.k:"):
        settings_from_mapping({"tiers": TWO_TIERS})


def test_config_path_and_static_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_path_from_env() is None
    assert static_keys_from_env() == {}

    monkeypatch.setenv("ECHOLM_CONFIG", "/etc/echolm.yaml")
    monkeypatch.setenv("ECHOLM_STATIC_KEYS", "sk-1=team-a, sk-2=team-b,broken,=x,k=")

    assert config_path_from_env() == Path("/etc/echolm.yaml")
    assert static_keys_from_env() == {"sk-1": "team-a", "sk-2": "team-b"}


def test_check_tiers_exist_names_the_tier_index_and_the_bad_name() -> None:
    settings = settings_from_mapping({"tiers": [{"name": "cheap"}, {"name": "strnog"}]})

    with pytest.raises(ConfigError) as raised:
        check_tiers_exist(settings, {"cheap", "strong"})

    message = str(raised.value)
    assert "echolm.tiers[1].name" in message
    assert "'strnog'" in message
    assert "cheap, strong" in message


def test_model_groups_ignore_malformed_entries() -> None:
    config = {"model_list": [{"model_name": "a"}, {"litellm_params": {}}, "junk", {"model_name": 3}]}

    assert model_groups_in(config) == {"a"}
    assert model_groups_in({}) == set()


# ---- tier profiles ----------------------------------------------------------------------------


def _tiers(*specs: tuple[str, float | None]) -> tuple[TierSettings, ...]:
    return tuple(TierSettings(name=name, cost_per_1k_tokens=cost) for name, cost in specs)


def test_tier_profiles_scale_costs_by_the_dearest_tier() -> None:
    profiles = tier_profiles(
        _tiers(("cheap", 0.1), ("mid", 0.5), ("strong", 2.0)), price_lookup=lambda deployment: None
    )

    assert [(p.name, p.rank) for p in profiles] == [("cheap", 0), ("mid", 1), ("strong", 2)]
    assert [p.cost for p in profiles] == pytest.approx([0.05, 0.25, 1.0])


def test_free_tiers_are_costed_by_rank() -> None:
    profiles = tier_profiles(_tiers(("a", 0.0), ("b", 0.0), ("c", 0.0)), price_lookup=lambda deployment: None)

    assert [p.cost for p in profiles] == [0.0, 0.5, 1.0]


def test_tiers_not_listed_cheapest_first_are_refused() -> None:
    with pytest.raises(ConfigError, match="cheapest to dearest"):
        tier_profiles(_tiers(("strong", 2.0), ("cheap", 0.1)), price_lookup=lambda deployment: None)


def test_a_tier_without_a_cost_takes_the_price_litellm_charges_for_its_deployment() -> None:
    model_list = [
        # A deployment's own prices (LiteLLM's custom pricing), in litellm_params or model_info ...
        {"model_name": "cheap", "litellm_params": {"model": "openai/local", "input_cost_per_token": 1e-7,
                                                   "output_cost_per_token": 3e-7}},
        {"model_name": "mid", "litellm_params": {"model": "openai/ft"}, "model_info": {"input_cost_per_token": 1e-6,
                                                                                       "output_cost_per_token": 1e-6}},
        # ... else LiteLLM's cost map for its model.
        {"model_name": "strong", "litellm_params": {"model": "openai/gpt-4o"}},
    ]  # fmt: skip

    profiles = tier_profiles(_tiers(("cheap", None), ("mid", None), ("strong", None)), model_list)

    import litellm

    gpt4o = litellm.model_cost["gpt-4o"]
    assert profiles[0].prices.input_per_1k == pytest.approx(1e-4) and profiles[0].prices.output_per_1k == pytest.approx(
        3e-4
    )
    assert profiles[1].prices.input_per_1k == pytest.approx(1e-3)
    assert profiles[2].prices.input_per_1k == pytest.approx(gpt4o["input_cost_per_token"] * 1000)
    assert profiles[2].prices.output_per_1k == pytest.approx(gpt4o["output_cost_per_token"] * 1000)
    assert not any(p.prices.overridden for p in profiles)


def test_with_no_model_list_a_tier_without_a_cost_is_unpriced_and_costed_by_rank() -> None:
    # An engine in process (the LangChain door) has no LiteLLM deployments to price its tiers by.
    profiles = tier_profiles(_tiers(("cheap", None), ("strong", None)))
    assert [p.cost for p in profiles] == [0.0, 1.0] and all(p.prices.blended_per_1k == 0 for p in profiles)


def test_echolms_cost_overrides_litellms_price() -> None:
    model_list = [{"model_name": "strong", "litellm_params": {"model": "openai/gpt-4o"}}]
    (profile,) = tier_profiles(_tiers(("strong", 0.5)), model_list)
    assert (profile.prices.input_per_1k, profile.prices.output_per_1k, profile.prices.overridden) == (0.5, 0.5, True)


@pytest.mark.parametrize(
    ("model_list", "detail"),
    [
        ([{"model_name": "strong", "litellm_params": {"model": "openai/my-finetune"}}], "openai/my-finetune"),
        ([{"model_name": "other", "litellm_params": {"model": "openai/gpt-4o"}}], "no deployment found"),
    ],
)
def test_a_tier_with_no_cost_and_no_known_price_is_refused(model_list: list[dict[str, Any]], detail: str) -> None:
    with pytest.raises(ConfigError) as raised:
        tier_profiles(_tiers(("cheap", 0.1), ("strong", None)), model_list, price_lookup=lambda deployment: None)

    message = str(raised.value)
    assert "echolm.tiers[1].cost_per_1k_tokens" in message
    assert "'strong'" in message
    assert detail in message


def test_settings_are_frozen() -> None:
    settings = Settings(tiers=(TierSettings(name="a"),))

    with pytest.raises(ValidationError, match="frozen"):
        settings.routing.cost_weight = 1.0  # type: ignore[misc]
