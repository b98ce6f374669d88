"""Downloading weight files into the zoo cache: checksum, resume with HTTP Range, atomic.

The cache is ``$CIRLAB_ZOO_DIR`` (default: ``zoo/`` in cirlab's cache, ``cirlab.paths.cache_root()``);
files land in ``files/<name>``.
A download writes ``<name>.part`` and renames it when complete and its checksum matches; an
interrupted download (dropped connection, killed process) resumes from the bytes already there.
Without a network, or for files with no direct download, the error names the file and the path
to place it at by hand.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import CirlabError
from ..paths import cache_root
from .entries import WeightFile, ZooEntry

CHUNK = 1 << 20
ENV = "CIRLAB_ZOO_DIR"


def cache_dir() -> Path:
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else cache_root() / "zoo"


def file_path(w: WeightFile) -> Path:
    return cache_dir() / "files" / w.name


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def by_hand(w: WeightFile, dest: Path, why: str = "") -> CirlabError:
    where = w.url or w.source or "the authors' release"
    reason = f" ({why})" if why else ""
    return CirlabError(f"{w.name}: not in the zoo cache{reason}; download it from {where} and place it at "
                       f"{dest} (or set ${ENV} to a directory holding files/{w.name})")


def _total(resp: http.client.HTTPResponse, have: int) -> int | None:
    rng = resp.headers.get("Content-Range")          # "bytes START-END/TOTAL"
    if rng and "/" in rng and not rng.endswith("/*"):
        return int(rng.rsplit("/", 1)[1])
    length = resp.headers.get("Content-Length")
    return int(length) + (have if resp.status == 206 else 0) if length is not None else None


def download(url: str, dest: Path, sha256: str = "", *, attempts: int = 5, timeout: float = 60.0,
             progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (atomic), resuming a ``.part`` file; refuse a checksum mismatch."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last = ""
    for _ in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:       # nothing left to fetch: the .part is complete
                break
            raise CirlabError(f"{url}: HTTP {e.code} {e.reason} (destination {dest})") from None
        except (urllib.error.URLError, OSError) as e:
            raise CirlabError(f"could not download {url} ({getattr(e, 'reason', e)}); download it by hand and "
                              f"place it at {dest}") from None
        with resp:
            if have and resp.status != 206:  # the server ignored the Range: start over
                have = 0
            total = _total(resp, have)
            try:
                with open(part, "ab" if have else "wb") as f, \
                        tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                             disable=not progress) as bar:
                    while True:
                        block = resp.read(CHUNK)
                        if not block:
                            break
                        f.write(block)
                        bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as e:
                last = f"{type(e).__name__}: {e}"
                continue                     # resume from what arrived
        if total is None or part.stat().st_size >= total:
            break
        last = f"connection closed at {part.stat().st_size} of {total} bytes"
    else:
        raise CirlabError(f"{url}: download interrupted {attempts} times ({last}); run the command again to "
                          f"resume from {part}")
    if sha256:
        got = sha256_of(part)
        if got != sha256.lower():
            bad = part.with_name(dest.name + ".bad")
            os.replace(part, bad)
            raise CirlabError(f"{url}: checksum mismatch for {dest.name} (sha256 {got}, expected {sha256}); "
                              f"the download was kept at {bad} and not used")
    os.replace(part, dest)
    return dest


def fetch_file(w: WeightFile, *, progress: bool = True) -> Path:
    """The cached path of ``w``, downloading it when it has a direct URL and is not there yet."""
    dest = file_path(w)
    if dest.exists():
        return dest
    if not w.url:
        raise by_hand(w, dest, "no direct download")
    return download(w.url, dest, w.sha256, progress=progress)


def fetch_entry(entry: ZooEntry, *, progress: bool = True) -> dict[str, Path]:
    return {w.key: fetch_file(w, progress=progress) for w in entry.weights}


__all__ = ["ENV", "cache_dir", "download", "fetch_entry", "fetch_file", "file_path", "sha256_of"]
