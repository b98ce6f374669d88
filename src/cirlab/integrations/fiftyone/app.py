"""The FiftyOne App, served on 127.0.0.1 by a child process that cirlab starts and stops by its pid."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ...data.jsonl import write_json
from ...errors import CirlabError
from ...netsafe import LOOPBACK
from .env import stop_pid

APP_STATE = "app.json"


@dataclass
class AppServer:
    proc: subprocess.Popen
    port: int
    state_file: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def dataset_url(self, name: str) -> str:
        return f"{self.url}/datasets/{quote(name)}"

    def stop(self) -> None:
        stop_pid(self.proc.pid)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.state_file.unlink(missing_ok=True)


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/fiftyone", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_app(home: Path, port: int, timeout: float = 180.0) -> AppServer:
    """Start FiftyOne's server (``python -m fiftyone.server.main``) on 127.0.0.1:``port`` with the current
    environment (database URI, tracking off); returns once it answers. Its log: ``home/app.log``."""
    log = Path(home) / "app.log"
    env = {**os.environ, "FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DEFAULT_APP_ADDRESS": LOOPBACK}
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "fiftyone.server.main", "--port", str(port),
                                 "--address", LOOPBACK], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    server = AppServer(proc, port, Path(home) / APP_STATE)
    write_json(server.state_file, {"pid": proc.pid, "port": port})
    deadline = time.time() + timeout
    while not ready(server.url):
        if proc.poll() is not None or time.time() > deadline:
            server.stop()
            raise CirlabError(f"the FiftyOne App did not start on {server.url}; see {log}:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    return server
