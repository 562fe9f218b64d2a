"""The one error type raised when a wire message or topic cannot be understood."""

from __future__ import annotations


class WireError(ValueError):
    """A malformed, unknown or unsupported message or topic."""

    def __init__(self, message: str, *, topic: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic
