"""Errors with a message that names the file, field or value at fault."""
from __future__ import annotations


class CirlabError(Exception):
    """Base class for user-facing errors (the CLI prints these without a traceback)."""


class DatasetError(CirlabError):
    """A dataset file is missing, malformed or inconsistent."""


class IndexMismatchError(CirlabError):
    """An index on disk does not fit the backbone or the request."""
