"""The one error the API turns into ``{"error": {"code", "message"}}``."""

from __future__ import annotations


class ApiError(Exception):
    """An HTTP status, a stable machine code and a human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
