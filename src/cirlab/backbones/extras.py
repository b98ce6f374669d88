"""Optional dependencies of backbone kinds: a missing one is a one-line install hint."""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import CirlabError


class MissingExtraError(CirlabError, ImportError):
    """An optional backbone kind's dependency is not installed (message = the install command)."""


def require(module: str, extra: str, kind: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` naming ``pip install 'cirlab[extra]'``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise MissingExtraError(f"the {kind}: backbones need {e.name}: pip install 'cirlab[{extra}]'") from None
