"""Files that are never half-written, never silently changed, and never written by two processes at once.

- ``atomic_write_text`` / ``atomic_write_bytes``: temp file in the same directory + ``os.replace``.
- ``DirLock``: one writer per output directory. The lock is an ``fcntl.flock`` on
  ``<dir>/.cirlab.lock`` holding the owner's PID; the kernel drops it when its process dies, so a
  lock left by a killed process is taken over (and reported, by its PID) by the next writer, while
  a live owner makes the next writer fail with an error naming its PID (or wait, with ``wait=``).
- ``seal`` / ``check_sealed``: a record per file (size, mtime, SHA-256). ``seal`` pins the file's
  mtime one second into the past, so any later write (which stamps the current time) changes it.
  ``check_sealed`` compares size and mtime (the fast path: one ``stat`` per file) and re-hashes a
  file only when they differ, or always with ``full=True``.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import CirlabError

LOCK_NAME = ".cirlab.lock"
HASH_BLOCK = 1 << 20
PIN_BACK_NS = 1_000_000_000  # a sealed file's mtime is set this far before the seal
#: the mtime files of a generated dataset are pinned to (2000-01-01T00:00:00Z), so their records, and the
#: dataset.json that holds them, are the same on every run
FIXED_MTIME_NS = 946_684_800 * 1_000_000_000


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json_object(path: str | os.PathLike[str], error: type[CirlabError], what: str) -> dict[str, Any]:
    """A JSON object from ``path``; anything else raises ``error`` naming the file and ``what`` it is."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: {what} ({getattr(e, 'msg', None) or e.reason})") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: {what} (a JSON {type(obj).__name__}, not an object)")
    return obj


# -- one writer per directory ------------------------------------------------------------------

class LockedError(CirlabError):
    """Another live process holds the directory's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class DirLock:
    """An exclusive lock on a directory for the duration of a ``with`` block (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], what: str = "written", wait: float = 0.0) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.what = what
        self.wait = wait
        self._fd: int | None = None
        #: the PID of a dead process whose lock was taken over (None when the lock was free)
        self.took_over: int | None = None

    def _owner(self, fd: int) -> dict[str, str]:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def acquire(self) -> "DirLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    owner = self._owner(fd)
                    os.close(fd)
                    raise LockedError(
                        f"{self.directory} is being {self.what} by another process (PID {owner.get('pid', '?')} "
                        f"on {owner.get('host', '?')}, since {owner.get('since', '?')}); wait for it to finish") from None
                time.sleep(0.1)
        owner = self._owner(fd)
        pid = owner.get("pid", "")
        if pid.isdigit() and int(pid) != os.getpid() and owner.get("host") == socket.gethostname() \
                and not _pid_alive(int(pid)):
            self.took_over = int(pid)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
                     f"since={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an unheld lock names no owner
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# -- sealed files --------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class FileRecord:
    size: int
    mtime_ns: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "sha256": self.sha256}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "FileRecord":
        return FileRecord(int(d["size"]), int(d["mtime_ns"]), str(d["sha256"]))


def seal_file(path: str | os.PathLike[str], pin_ns: int | None = None) -> FileRecord:
    """Hash ``path`` and pin its mtime into the past (see the module docstring; ``pin_ns``: this mtime
    instead); returns its record."""
    digest = sha256_file(path)
    st = os.stat(path)
    pinned = pin_ns if pin_ns is not None else min(st.st_mtime_ns, time.time_ns()) - PIN_BACK_NS
    os.utime(path, ns=(st.st_atime_ns, pinned))
    st = os.stat(path)
    return FileRecord(st.st_size, st.st_mtime_ns, digest)


def seal(root: str | os.PathLike[str], names: Iterable[str], pin_ns: int | None = None
         ) -> dict[str, dict[str, Any]]:
    """``{name: record}`` for files named relative to ``root`` (stored in a manifest)."""
    return {n: seal_file(Path(root) / n, pin_ns).to_json() for n in names}


def check_sealed(root: str | os.PathLike[str], records: Mapping[str, Mapping[str, Any]], full: bool = False
                 ) -> list[str]:
    """Problems with the sealed files under ``root`` (empty when all are intact), each naming its file.

    A file whose size and mtime match its record is taken as intact unless ``full``; otherwise it is
    re-hashed and must match its SHA-256.
    """
    problems: list[str] = []
    for name, raw in records.items():
        p = Path(root) / name
        try:
            rec = FileRecord.from_json(raw)
        except (KeyError, TypeError, ValueError):
            problems.append(f"{p}: unreadable checksum record {raw!r}")
            continue
        try:
            st = os.stat(p)
        except FileNotFoundError:
            problems.append(f"{p}: missing")
            continue
        if st.st_size != rec.size:
            problems.append(f"{p}: {st.st_size} bytes, {rec.size} when it was written (truncated or replaced)")
            continue
        if full or st.st_mtime_ns != rec.mtime_ns:
            if sha256_file(p) != rec.sha256:
                problems.append(f"{p}: content changed since it was written (SHA-256 mismatch)")
    return problems
