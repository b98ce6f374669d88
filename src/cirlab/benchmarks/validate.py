"""Offline checks of prediction and submission files (the test servers' sanity checks).

``validate_file(split, path)`` returns ``Problems``: every error names the file, the
query and the value at fault, grouped by kind (the first ``SHOW`` cases of a kind
are listed, then a count). Two modes:

- ``server=True`` (``cirlab validate-submission``): exact lengths (50 ranked ids; 3
  for CIRR ``recall_subset``), ids of the right type (CIRCO: integers), file size cap.
- ``server=False`` (``cirlab eval-predictions``): at least as many ids as the
  deepest metric needs; ids may be given as strings.

Checked in both: the file is a JSON object without repeated keys; every query of the
split is present and nothing else; lists hold unique ids of the split's gallery;
CIRR: ``version`` is ``rc2`` and ``metric`` is ``recall`` or ``recall_subset``,
subset predictions are set members other than the reference; the reference in a
``recall`` list is a warning (the protocol removes it, so it wastes a slot).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .base import BenchmarkSplit, Problems
from .submission import (CIRR_HEADER, CIRR_RECALL, CIRR_SUBSET, CIRR_VERSION, RANK_DEPTH, SUBSET_DEPTH,
                         coco_id, load_json_file)

SHOW = 10
#: our own cap on a submission file's size where a server publishes none (the official CIRCO
#: examples are 0.3 MB); override with --max-bytes
MAX_BYTES = 32 * 1024 * 1024
#: the servers' own upload limits (CIRR's evaluation server accepts files up to 5 MB; its official
#: recall example is 4.19 MB)
SERVER_MAX_BYTES = {"cirr": 5_000_000}


def max_bytes_for(benchmark: str) -> int:
    return SERVER_MAX_BYTES.get(benchmark, MAX_BYTES)


class _Collector:
    """Groups per-query problems by kind so thousands of identical problems stay readable."""

    def __init__(self, where: str, noun: str) -> None:
        self.where = where
        self.noun = noun
        self.kinds: dict[tuple[str, str], list[str]] = defaultdict(list)

    def add(self, level: str, kind: str, message: str) -> None:
        self.kinds[(level, kind)].append(message)

    def flush(self, problems: Problems) -> None:
        for (level, kind), msgs in self.kinds.items():
            sink = problems.error if level == "error" else problems.warn
            for m in msgs[:SHOW]:
                sink(f"{self.where}: {m}")
            if len(msgs) > SHOW:
                sink(f"{self.where}: ... {len(msgs) - SHOW} more {self.noun}s with the same problem ({kind})")


def _ids_of(value: Any, server_int: bool | None, norm: Callable[[Any], str] = str
            ) -> tuple[list[str] | None, str | None]:
    """The list's items as strings (through ``norm``), or an error. ``server_int``: True = must be ints,
    False = must be str."""
    if not isinstance(value, list):
        return None, f"expected a list of image ids, got {type(value).__name__}"
    out = []
    for n, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, (int, str)):
            return None, f"item {n} is {type(x).__name__} {x!r}, not an image id"
        if server_int is True and not isinstance(x, int):
            return None, f"item {n} is {x!r}: the server expects integer image ids"
        if server_int is False and not isinstance(x, str):
            return None, f"item {n} is {x!r}: the server expects image names (strings)"
        out.append(norm(x))
    return out, None


def _check_list(c: _Collector, qname: str, ids: list[str], length: int, exact: bool,
                allowed: Callable[[str], str | None]) -> None:
    if exact and len(ids) != length:
        c.add("error", "wrong length", f"{qname}: {len(ids)} predictions, expected {length}")
    elif not exact and len(ids) < length:
        c.add("error", "too short", f"{qname}: {len(ids)} predictions, at least {length} needed")
    first: dict[str, int] = {}
    for n, x in enumerate(ids):
        if x in first:
            c.add("error", "duplicate id", f"{qname}: duplicate id {x!r} at positions {first[x] + 1} and {n + 1}")
        else:
            first[x] = n
        why = allowed(x)
        if why:
            c.add("error", "bad id", f"{qname}: {x!r} {why}")


def _keys(c: _Collector, obj: Mapping[str, Any], expected: Sequence[str], noun: str, split_name: str,
          ignore: Sequence[str] = ()) -> None:
    exp = set(expected)
    missing = [q for q in expected if q not in obj]
    extra = [k for k in obj if k not in exp and k not in ignore]
    if missing:
        shown = ", ".join(missing[:SHOW]) + (f" and {len(missing) - SHOW} more" if len(missing) > SHOW else "")
        c.add("error", "missing", f"missing {noun}(s) ({len(missing)} of {len(expected)}): {shown}")
    if extra:
        shown = ", ".join(map(repr, extra[:SHOW])) + (f" and {len(extra) - SHOW} more" if len(extra) > SHOW else "")
        c.add("error", "extra", f"{len(extra)} key(s) that are not {noun}s of {split_name}: {shown}")


def _gallery_check(split: BenchmarkSplit, part: str, split_name: str) -> Callable[[str], str | None]:
    gallery = split.parts[part].gallery
    if not split.has_gallery:
        return lambda x: None
    return lambda x: None if x in gallery else f"is not an image of {split_name}"


def validate_cirr(split: BenchmarkSplit, obj: Any, where: str, *, server: bool,
                  metric: str | None = None) -> tuple[Problems, str | None]:
    """Problems of one CIRR file, and its ``metric`` field (``recall`` or ``recall_subset``)."""
    p = Problems()
    c = _Collector(where, "pairid")
    if not isinstance(obj, dict):
        p.error(f"{where}: expected a JSON object, got {type(obj).__name__}")
        return p, None
    version = obj.get("version")
    if "version" not in obj:
        p.error(f"{where}: missing field 'version' (must be {CIRR_VERSION!r})")
    elif version != CIRR_VERSION:
        p.error(f"{where}: field 'version' is {version!r}, expected {CIRR_VERSION!r}")
    got = obj.get("metric")
    if "metric" not in obj:
        p.error(f"{where}: missing field 'metric' (must be {CIRR_RECALL!r} or {CIRR_SUBSET!r})")
        got = None
    elif got not in (CIRR_RECALL, CIRR_SUBSET):
        p.error(f"{where}: field 'metric' is {got!r}, expected {CIRR_RECALL!r} or {CIRR_SUBSET!r}")
        got = None
    elif metric is not None and got != metric:
        p.error(f"{where}: field 'metric' is {got!r}, expected {metric!r} for this file")
    kind = got or metric or CIRR_RECALL
    name = f"cirr {split.split}"
    trips = split.parts["all"].triplets
    _keys(c, obj, [t.id for t in trips], "pairid", name, CIRR_HEADER)
    in_split = _gallery_check(split, "all", f"the {name} split")
    for t in trips:
        if t.id not in obj:
            continue
        ids, err = _ids_of(obj[t.id], False if server else None)
        if err:
            c.add("error", "not a list", f"pairid {t.id}: {err}")
            continue
        assert ids is not None
        if kind == CIRR_SUBSET:
            group = set(t.meta["members"]) - {t.reference}

            def allowed(x: str, t=t, group=group) -> str | None:
                if x == t.reference:
                    return ("is the reference image; recall_subset predictions must be set members other than "
                            "the reference")
                return None if x in group else "is not a member of this query's img_set"

            _check_list(c, f"pairid {t.id}", ids, SUBSET_DEPTH, server, allowed)
        else:
            _check_list(c, f"pairid {t.id}", ids, RANK_DEPTH, server, in_split)
            if t.reference in ids[:RANK_DEPTH]:
                c.add("warning", "reference ranked",
                      f"pairid {t.id}: the reference {t.reference!r} is ranked at {ids.index(t.reference) + 1}; the "
                      f"protocol removes it from the ranking, so it wastes a slot")
    c.flush(p)
    return p, got


def validate_circo(split: BenchmarkSplit, obj: Any, where: str, *, server: bool) -> Problems:
    p = Problems()
    c = _Collector(where, "query")
    if not isinstance(obj, dict):
        p.error(f"{where}: expected a JSON object {{query id: [image ids]}}, got {type(obj).__name__}")
        return p
    trips = split.parts["all"].triplets
    _keys(c, obj, [t.id for t in trips], "query id", f"circo {split.split}")
    in_gallery = _gallery_check(split, "all", "the COCO 2017 unlabeled gallery")
    for t in trips:
        if t.id in obj:
            ids, err = _ids_of(obj[t.id], True if server else None, coco_id)
            if err:
                c.add("error", "not a list", f"query {t.id}: {err}")
                continue
            assert ids is not None
            _check_list(c, f"query {t.id}", ids, RANK_DEPTH, server, in_gallery)
    c.flush(p)
    if not split.has_gallery:
        p.warn(f"{where}: image ids not checked against the gallery ({'; '.join(split.notes)})")
    return p


def validate_fashioniq(split: BenchmarkSplit, obj: Any, where: str, *, server: bool = False) -> Problems:
    p = Problems()
    c = _Collector(where, "query")
    if not isinstance(obj, dict):
        p.error(f"{where}: expected a JSON object {{category: [[asin, ...], ...]}}, got {type(obj).__name__}")
        return p
    unknown = [k for k in obj if k not in split.parts]
    if unknown:
        p.error(f"{where}: unknown categor(ies) {unknown}; expected {list(split.parts)}")
    if not any(k in split.parts for k in obj):
        p.error(f"{where}: no category of {list(split.parts)} present")
    for cat, ds in split.parts.items():
        if cat not in obj:
            continue
        rows = obj[cat]
        if not isinstance(rows, list) or len(rows) != len(ds.triplets):
            n = len(rows) if isinstance(rows, list) else type(rows).__name__
            p.error(f"{where}: {cat!r} must be a list of {len(ds.triplets)} rankings (one per entry of "
                    f"cap.{cat}.{split.split}.json, in order), got {n}")
            continue
        in_gallery = _gallery_check(split, cat, f"the {cat} {split.split} gallery")
        for t, row in zip(ds.triplets, rows):
            ids, err = _ids_of(row, False if server else None)
            if err:
                c.add("error", "not a list", f"{t.id}: {err}")
                continue
            assert ids is not None
            _check_list(c, t.id, ids, RANK_DEPTH, server, in_gallery)
    c.flush(p)
    return p


def validate_file(split: BenchmarkSplit, path: Path, *, server: bool = True, metric: str | None = None,
                  max_bytes: int | None = None) -> tuple[Problems, Any, str | None]:
    """Check one file for ``split``: (problems, parsed object, CIRR metric field or None).
    ``max_bytes``: default, the benchmark server's limit (``max_bytes_for``)."""
    path = Path(path)
    max_bytes = max_bytes or max_bytes_for(split.benchmark)
    where = str(path)
    p = Problems()
    size = path.stat().st_size if path.is_file() else 0
    if server and size > max_bytes:
        p.error(f"{where}: {size} bytes, over the {max_bytes}-byte limit")
    obj, dups = load_json_file(path)
    for k in dups:
        p.error(f"{where}: key {k!r} appears more than once (duplicate id)")
    got = None
    if split.benchmark == "cirr":
        q, got = validate_cirr(split, obj, where, server=server, metric=metric)
    elif split.benchmark == "circo":
        q = validate_circo(split, obj, where, server=server)
    else:
        q = validate_fashioniq(split, obj, where, server=server)
    p.extend(q)
    return p, obj, got
