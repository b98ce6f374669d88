"""Errors with a message that names the file, field or value at fault."""
from __future__ import annotations


class CirlabError(Exception):
    """Base class for user-facing errors (the CLI prints these without a traceback)."""


class DatasetError(CirlabError):
    """A dataset file is missing, malformed or inconsistent."""


class IndexMismatchError(CirlabError):
    """An index on disk does not fit the backbone or the request."""


class UnknownNameError(CirlabError, KeyError):
    """A spec string names a kind no registry knows (a ``KeyError`` too, for callers that catch those)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SpecError(CirlabError, ValueError):
    """A spec string's argument is invalid, e.g. ``weighted:abc`` (a ``ValueError`` too)."""
