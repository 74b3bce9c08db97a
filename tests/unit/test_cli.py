"""The `echolm` command line: every subcommand documents itself; a bad config stops the proxy start."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from echolm_middleware.cli.main import build_parser, subcommand_modules

ROOT = Path(__file__).resolve().parents[2]


def _echolm(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "echolm_middleware.cli.main", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.parametrize("command", sorted(subcommand_modules()))
def test_every_subcommand_has_help_that_describes_each_option(command: str) -> None:
    result = _echolm(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: echolm " + command in result.stdout
    subparsers = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    _assert_documented(subparsers.choices[command], f"echolm {command}")


def test_replay_is_the_upkeep_command_under_its_old_name() -> None:
    from echolm_middleware.cli import upkeep

    by_new, by_old = _echolm("upkeep", "--help"), _echolm("replay", "--help")
    assert (by_new.returncode, by_old.returncode) == (0, 0), by_new.stderr + by_old.stderr
    assert by_old.stdout == by_new.stdout
    assert "usage: echolm upkeep" in by_new.stdout and "--budget-tokens" in by_new.stdout
    parser = build_parser()
    for name in ("upkeep", "replay"):
        args = parser.parse_args([name, "--tenant", "acme", "--dry-run"])
        assert (args.func, args.tenants, args.dry_run) == (upkeep.run, ["acme"], True)


def _assert_documented(parser: argparse.ArgumentParser, name: str) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub_parser in action.choices.items():
                _assert_documented(sub_parser, f"{name} {sub_name}")
        else:
            assert action.help, f"{name}: option {action.option_strings or action.dest} has no help"


def test_proxy_check_accepts_the_repository_config() -> None:
    result = _echolm("proxy", "--check", "--config", str(ROOT / "config.yaml"))
    assert result.returncode == 0, result.stderr
    assert "is valid (2 tiers: cheap, strong)" in result.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["echolm"]["routing"].update(cost_weigth=0.2), "echolm.routing.cost_weigth: unknown key"),
        (lambda c: c["echolm"].update(colour="blue"), "echolm.colour: unknown key"),
        (
            lambda c: c["echolm"]["tiers"][1].update(name="strnog"),
            "echolm.tiers[1].name: 'strnog' names no model group",
        ),
        (lambda c: c["echolm"]["tiers"][0].update(capacity=-1), "echolm.tiers.0.capacity"),
    ],
)
def test_proxy_refuses_to_start_on_a_bad_echolm_section(tmp_path: Path, change: object, message: str) -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["echolm"].setdefault("routing", {})
    change(config)  # type: ignore[operator]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _echolm("proxy", "--config", str(path))
    assert result.returncode == 2
    assert message in result.stderr


def test_explain_names_an_unknown_request_id(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["echolm"]["state"] = {"path": str(tmp_path / "state.db")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    from echolm_middleware.backends.sqlite_state import SQLiteState

    SQLiteState(tmp_path / "state.db").close()
    result = _echolm("explain", "no-such-id", "--config", str(path))
    assert result.returncode == 1
    assert "no decision with request id 'no-such-id'" in result.stderr


def test_the_labs_commands_come_from_entry_points_and_the_products_from_its_own_registry() -> None:
    modules = subcommand_modules()

    assert modules["bench"] == "echolm_lab.cli.bench" and modules["tiers"] == "echolm_lab.cli.tiers"
    assert {name for name, module in modules.items() if module.startswith("echolm_middleware.")} == {
        "explain",
        "proxy",
        "upkeep",
    }


def test_a_command_whose_package_is_not_installed_is_left_out_and_one_missing_a_dependency_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any
) -> None:
    """An image with the product alone (deploy/Dockerfile) keeps the lab's entry points but not the lab."""
    from echolm_middleware.cli import main as cli_main

    broken = tmp_path / "echolm_broken_plugin.py"
    broken.write_text("import a_dependency_that_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = {"ghost": "echolm_not_installed.cli.ghost", "bench": "echolm_lab.cli.bench"}
    monkeypatch.setattr(cli_main, "subcommand_modules", lambda: {**cli_main.SUBCOMMANDS, **plugins})

    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert "ghost" not in choices and {"bench", "proxy", "upkeep"} <= set(choices)

    # A lab command whose extra is missing (`servers` imports psutil, from `local`) found by the wheel in a
    # venv with [litellm] only: it took every command down, `echolm proxy` included.
    monkeypatch.setattr(
        cli_main, "subcommand_modules", lambda: {**cli_main.SUBCOMMANDS, "broken": "echolm_broken_plugin"}
    )
    assert cli_main.main(["proxy", "--check", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err  # the proxy command ran, and said what was wrong
    assert cli_main.main(["broken", "start", "--port", "1"]) == 2  # its own arguments, whatever they were
    assert capsys.readouterr().err.strip() == (
        "echolm broken: needs a_dependency_that_is_missing, which is not installed: "
        "pip install 'echolm-middleware[all]'"
    )


def test_proxy_without_the_litellm_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    import importlib.util

    from echolm_middleware.cli import proxy

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litellm" else real(name, *a))
    args = argparse.Namespace(config=ROOT / "config.yaml", host="127.0.0.1", port=4000, workers=1, check=False)

    assert proxy.run(args) == 2
    assert "pip install 'echolm-middleware[litellm]'" in capsys.readouterr().err
