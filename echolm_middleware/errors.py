"""One error tree: backends translate their library's exceptions into these; integrations fail open on them."""

from __future__ import annotations


class EchoLMError(Exception):
    """Root of every error echolm-middleware raises on purpose."""


class ConfigError(EchoLMError):
    """The configuration is invalid; the message names the key and the reason."""


class StoreUnavailable(EchoLMError):
    """The example store (Chroma, a server, a disk) could not be reached or failed."""


class EmbedderUnavailable(EchoLMError):
    """The embedder could not be loaded or failed to embed."""


class StateUnavailable(EchoLMError):
    """The decision log or the router's persisted statistics could not be read or written."""


class UnknownRequest(EchoLMError):
    """A request id that no kept decision carries."""


class FeedbackAlreadyGiven(EchoLMError):
    """A request's response was already scored; a second score would count it twice."""


class MissingExtra(EchoLMError):
    """An optional dependency is not installed; the message says which extra provides it."""
