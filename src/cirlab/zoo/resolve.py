"""From a zoo entry to runnable specs: find (or fetch) its files, import them once, write its config.

``materialize(entry)`` returns the method spec and backbone spec of the entry with every ``{key}``
replaced by the converted file's path in the cache (``imported/<file name>/``, converted atomically:
into a temporary directory renamed when complete). ``resolve_method_spec`` is the hook that makes an
entry name usable as a method spec anywhere (``--methods searle:vit-l14``); a spec naming an existing
path (``searle:runs/phi``) is left alone.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CirlabError
from .entries import ZOO, ZooEntry, get_entry
from .fetch import by_hand, cache_dir, fetch_file, file_path

MARKER = "zoo-import.json"


@dataclass
class Materialized:
    entry: ZooEntry
    method: str
    backbone: str
    files: dict[str, Path]


def _fill(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def _fill_any(obj: Any, values: dict[str, str]) -> Any:
    if isinstance(obj, str):
        return _fill(obj, values)
    if isinstance(obj, dict):
        return {k: _fill_any(v, values) for k, v in obj.items()}
    return obj


def _keys(text: str) -> set[str]:
    return set(re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", text))


def imported_path(name: str) -> Path:
    return cache_dir() / "imported" / name


def import_file(importer: str, src: Path, name: str, **kw: Any) -> Path:
    """Convert ``src`` with ``importer`` into ``imported/<name>/`` once (atomic); the converted path."""
    from .importers import convert

    final = imported_path(name)
    marker = final / MARKER
    if marker.is_file():
        return final / json.loads(marker.read_text())["path"]
    if final.exists():   # the zoo renames a complete import into place, marker included: this is not one
        raise CirlabError(f"{final}: exists but was not written by the zoo (no {MARKER}); move it away and run "
                          f"again")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        out = convert(importer, src, tmp / "out", **kw)
        rel = out.resolve().relative_to((tmp / "out").resolve())
        (tmp / "out" / MARKER).write_text(json.dumps({"path": str(rel), "importer": importer, "source": str(src)}))
        os.replace(tmp / "out", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # the temporary directory this call made
    return final / rel


def materialize(entry: ZooEntry | str, benchmark: str | None = None, *, backbone: str | None = None,
                fetch: bool = False, progress: bool = True, method_only: bool = False) -> Materialized:
    """The entry's method and backbone specs with its files in place (``fetch``: download what is missing;
    ``backbone``: use this backbone spec instead of the entry's, so files only the backbone needs are skipped;
    ``method_only``: skip them too, the caller brings its own backbone)."""
    e = get_entry(entry) if isinstance(entry, str) else entry
    needed_by_method = _keys(e.method) | {k for v in e.method_config.values() if isinstance(v, str) for k in _keys(v)}
    values: dict[str, str] = {}
    files: dict[str, Path] = {}
    skip_backbone = backbone is not None or method_only
    used = [w for w in e.weights if not skip_backbone or w.key in needed_by_method]
    missing = [by_hand(w, file_path(w), f"run `cirlab zoo fetch {e.name}`" if w.url else "no direct download")
               for w in used if not file_path(w).exists() and not (fetch and w.url)]
    if missing:
        raise CirlabError("\n".join(str(m) for m in missing))
    for w in used:
        src = file_path(w)
        if not src.exists():
            fetch_file(w, progress=progress)
        if w.importer:
            bb_spec = backbone if backbone is not None else "" if method_only else _fill(e.backbone, values)
            args = _fill_any(dict(w.importer_args), {**values, "backbone": bb_spec})
            files[w.key] = import_file(w.importer, src, w.name, **args)
        else:
            files[w.key] = src
        values[w.key] = str(files[w.key])
    bb = backbone or _fill(e.backbone, values) + e.backbone_options()
    if e.method_config:
        cfg = _fill_any(dict(e.method_config), values)
        if benchmark is not None:
            cfg.update(e.presets.get(benchmark, {}).get("config", {}))
        kind = e.method.split(":", 1)[0]
        d = cache_dir() / "configs" / re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{e.name}-{benchmark or 'default'}")
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{kind}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(cfg, indent=1))
        os.replace(tmp, path)
        values["config"] = str(path)
    return Materialized(e, _fill(e.method, values), bb, files)


def resolve_method_spec(spec: str) -> str | None:
    """A zoo entry name -> its method spec (files imported on first use); ``None`` for other specs."""
    if spec not in ZOO:
        return None
    _, _, arg = spec.partition(":")
    if arg and Path(arg).expanduser().exists():
        return None
    return materialize(spec, method_only=True).method


__all__ = ["Materialized", "import_file", "imported_path", "materialize", "resolve_method_spec"]
