"""The one error type handlers raise: an HTTP status and a message for the client."""
from __future__ import annotations

from ..errors import CirlabError


class RequestError(CirlabError):
    """A client error: answered as ``{"detail": message}`` with ``status`` (a 4xx code)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
