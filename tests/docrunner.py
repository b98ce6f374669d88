"""Run the code blocks of README.md and docs/*.md (the executable-docs convention of DEVELOPERS.md).

Every fenced block tagged ``bash``/``sh``/``shell`` or ``python`` is run, in document order, in one
temporary directory per document: shell blocks with ``bash -e -o pipefail`` and the project's venv
first on ``PATH``, Python blocks in one interpreter per document (so a snippet sees the names an
earlier one defined). Each directory starts with ``world/``, a copy of the world ``cirlab world
generate --out world --queries 60`` makes (generated once per run).

Directives, in the lines just above a block (blank lines between are allowed):

* a visible line ``Not run in tests: REASON`` (any emphasis): the block is not run;
* ``<!-- doctest: quick: COMMAND -->`` or a multi-line ``<!-- doctest: quick`` ... ``-->``: run this
  instead of the block (the short variant of a long command);
* ``<!-- doctest: before`` ... ``-->``: run this first (e.g. make an input file the text assumes);
* ``<!-- doctest: output -->``: the block is the expected output of the previous run block; lines are
  compared after stripping trailing blanks, and ``...`` stands for any text (within a line, or whole
  lines when alone on its line);
* ``<!-- doctest: timeout: SECONDS -->`` (default 300).

Blocks in other languages (``json``, ``text``, untagged) are not run; an untagged block that starts with a
command (``cirlab``, ``python``, ``pip``, ``make``, ``curl``) is an error: tag it ``bash``.

As a tool: ``.venv/bin/python tests/docrunner.py docs/index.md [README.md ...]`` runs those documents
and prints each block's outcome (``--keep`` leaves the directories for inspection).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"bash", "sh", "shell"}
PYTHON_LANGS = {"python", "py"}
COMMAND_START = re.compile(r"^\s*(\$\s+)?(cirlab|python3?|pip|make|curl)\s")
DIRECTIVE = re.compile(r"<!--\s*doctest:\s*(?P<body>.*?)\s*-->", re.S)
SKIP_LINE = re.compile(r"^[\s*_>]*not run in tests:\s*(?P<reason>.*?)[\s*_]*$", re.I | re.S)
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
WORLD_QUERIES = 60
DEFAULT_TIMEOUT = 300.0


class DocError(Exception):
    """A block failed, or a document breaks the convention; the message names file and line."""


@dataclass
class Block:
    path: Path
    line: int                      # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None        # reason, from the visible "Not run in tests:" line
    quick: str | None = None
    before: str | None = None
    expect_output: bool = False
    timeout: float = DEFAULT_TIMEOUT

    @property
    def where(self) -> str:
        try:
            rel = self.path.resolve().relative_to(REPO)
        except ValueError:
            rel = self.path
        return f"{rel}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.lang in SHELL_LANGS or self.lang in PYTHON_LANGS

    @property
    def to_run(self) -> str:
        code = self.quick if self.quick is not None else self.code
        return (self.before + "\n" + code) if self.before else code


def _directives(text_before: str) -> list[str]:
    """The doctest directives and the visible skip line in the lines just above a block."""
    lines = text_before.splitlines()
    found: list[str] = []
    i = len(lines) - 1
    while i >= 0:
        line = lines[i]
        if not line.strip():
            i -= 1
            continue
        if not line.rstrip().endswith("-->"):
            j = i                                   # the paragraph just above: is it "Not run in tests: ..."?
            while j > 0 and lines[j - 1].strip() and not lines[j - 1].rstrip().endswith("-->"):
                j -= 1
            m = SKIP_LINE.match(" ".join(ln.strip() for ln in lines[j:i + 1]))
            if not m:
                break
            found.append("skip: " + m.group("reason"))
            i = j - 1
            continue
        j = i                                       # an HTML comment ending here: a doctest directive?
        while j >= 0 and "<!--" not in lines[j]:
            j -= 1
        m = DIRECTIVE.search("\n".join(lines[j:i + 1])) if j >= 0 else None
        if not m:
            break
        found.append(m.group("body"))
        i = j - 1
    return found


def parse(path: Path) -> list[Block]:
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group("fence"), m.group("lang").lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        indent = len(m.group("indent"))
        code = "\n".join(ln[indent:] if ln[:indent].isspace() else ln for ln in body)
        block = Block(Path(path), start + 1, lang, code)
        for d in _directives("\n".join(lines[:start])):
            head, _, tail = d.partition("\n")
            kind, _, rest = head.partition(":")
            kind, rest = kind.strip(), (rest.strip() + "\n" + tail).strip()
            if kind == "skip":
                if not rest.strip():
                    raise DocError(f"{block.where}: 'Not run in tests:' needs a reason")
                block.skip = rest.strip()
            elif kind == "quick":
                block.quick = rest.strip()
            elif kind == "before":
                block.before = rest.strip()
            elif kind == "output":
                block.expect_output = True
            elif kind == "timeout":
                block.timeout = float(rest)
            else:
                raise DocError(f"{block.where}: unknown doctest directive {kind!r}")
        if not block.runnable and not block.expect_output:
            first = next((ln for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
            if not lang and COMMAND_START.match(first):
                raise DocError(f"{block.where}: an untagged block holds a command ({first.strip()[:40]!r}); "
                               "tag it ```bash (or mark it 'Not run in tests: REASON')")
        blocks.append(block)
        i += 1
    return blocks


def doc_paths() -> list[Path]:
    return [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))


# ---------------------------------------------------------------------------------------------- running

WORKER = r"""
import json, os, sys, traceback
ctl = os.fdopen(os.dup(1), "w")
ns = {"__name__": "__main__"}
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1); os.dup2(err, 2)
    ok = True
    try:
        exec(compile(req["code"], req["name"], "exec"), ns)
    except SystemExit as e:
        ok = e.code in (None, 0)
    except BaseException:
        ok = False
        traceback.print_exc()
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        for fd in (out, err, *saved):
            os.close(fd)
    ctl.write(json.dumps({"ok": ok}) + "\n"); ctl.flush()
"""


def make_world(root: Path) -> Path:
    """The shared world every document starts with (what ``--queries 60`` makes, seed 0)."""
    from cirlab.world import WorldConfig, generate_world

    generate_world(root, WorldConfig(seed=0).small(WORLD_QUERIES), progress=False)
    return root


def doc_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"CIRLAB_CACHE": str(cache / "cirlab"), "XDG_CACHE_HOME": str(cache / "xdg"),
                "HF_HOME": str(cache / "hf"), "MPLCONFIGDIR": str(cache / "mpl"), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")})
    return env


@dataclass
class Outcome:
    block: Block
    status: str                    # "ok", "skipped", "output-ok", "not-code"
    seconds: float = 0.0
    stdout: str = ""
    detail: str = ""


def _tail(text: str, n: int = 40) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join(lines[-n:])


def output_matches(expected: str, actual: str) -> bool:
    def norm(s: str) -> str:
        return "\n".join(ln.rstrip() for ln in s.strip("\n").splitlines()).strip("\n")

    parts = []
    for ln in norm(expected).splitlines():
        if ln.strip() == "...":
            parts.append(r"(?:.*\n)*?")
        else:
            parts.append(".*?".join(re.escape(p) for p in ln.split("...")) + r"\n")
    return re.fullmatch("".join(parts), norm(actual) + "\n") is not None


@dataclass
class DocRun:
    """Runs one document's blocks in order in ``workdir``."""
    path: Path
    workdir: Path
    world: Path
    cache: Path
    log: list[Outcome] = field(default_factory=list)
    _worker: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.env = doc_env(self.cache)
        self.workdir.mkdir(parents=True, exist_ok=True)
        own = self.workdir / "world"      # a copy (0.3 s): a block that writes into world/ changes no other doc's
        if not own.exists():
            shutil.copytree(self.world, own)

    def run(self, echo=None) -> list[Outcome]:
        last: Outcome | None = None
        try:
            for block in parse(self.path):
                if block.expect_output:
                    if last is None:
                        raise DocError(f"{block.where}: an output block follows no block that ran")
                    if last.status == "skipped":
                        out = Outcome(block, "skipped", detail="its command is not run")
                    elif not output_matches(block.code, last.stdout):
                        raise DocError(f"{block.where}: the output differs from what {last.block.where} printed:\n"
                                       f"--- expected\n{block.code}\n--- got\n{_tail(last.stdout)}")
                    else:
                        out = Outcome(block, "output-ok")
                elif not block.runnable:
                    continue
                elif block.skip:
                    out = Outcome(block, "skipped", detail=block.skip)
                else:
                    out = self._run_block(block)
                self.log.append(out)
                if echo:
                    echo(out)
                if not block.expect_output:
                    last = out
        finally:
            self.close()
        return self.log

    def _run_block(self, block: Block) -> Outcome:
        t0 = time.monotonic()
        if block.lang in SHELL_LANGS:
            # its own session, so that whatever the block left running in the background ends with it
            proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", block.to_run], cwd=self.workdir,
                                    env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                stdout, stderr = proc.communicate(timeout=block.timeout)
            except subprocess.TimeoutExpired:
                raise DocError(f"{block.where}: still running after {block.timeout:.0f} s") from None
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            p = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
            if p.returncode != 0:
                raise DocError(f"{block.where}: exit status {p.returncode}\n$ {block.to_run}\n--- stdout\n"
                               f"{_tail(p.stdout)}\n--- stderr\n{_tail(p.stderr)}")
            return Outcome(block, "ok", time.monotonic() - t0, p.stdout)
        ok, out, err = self._run_python(block)
        if not ok:
            raise DocError(f"{block.where}: the snippet failed\n--- stdout\n{_tail(out)}\n--- stderr\n{_tail(err)}")
        return Outcome(block, "ok", time.monotonic() - t0, out)

    def _run_python(self, block: Block) -> tuple[bool, str, str]:
        if self._worker is None:
            self._worker = subprocess.Popen([sys.executable, "-c", WORKER], cwd=self.workdir, env=self.env,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        n = len(self.log)
        out_f, err_f = self.workdir / f".doctest-{n}.out", self.workdir / f".doctest-{n}.err"
        req = {"code": block.to_run, "name": block.where, "stdout": str(out_f), "stderr": str(err_f)}
        self._worker.stdin.write(json.dumps(req) + "\n")
        self._worker.stdin.flush()
        reply: list[str] = []
        reader = threading.Thread(target=lambda: reply.append(self._worker.stdout.readline()), daemon=True)
        reader.start()
        reader.join(block.timeout)
        if reader.is_alive() or not reply or not reply[0]:
            self.close()
            raise DocError(f"{block.where}: the snippet " + ("did not finish in %.0f s" % block.timeout
                                                             if not reply else "crashed the interpreter")
                           + f"\n--- stderr\n{_tail(err_f.read_text()) if err_f.exists() else ''}")
        res = json.loads(reply[0])
        out, err = out_f.read_text(), err_f.read_text()
        out_f.unlink()
        err_f.unlink()
        return res["ok"], out, err

    def close(self) -> None:
        if self._worker is not None:
            if self._worker.poll() is None:
                self._worker.stdin.close()
                try:
                    self._worker.wait(10)
                except subprocess.TimeoutExpired:
                    self._worker.kill()
                    self._worker.wait()
            self._worker = None


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="run the code blocks of markdown documents (see DEVELOPERS.md)")
    ap.add_argument("docs", nargs="*", type=Path, help="documents (default: README.md and docs/*.md)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="cirlab-docs-"))
    failed = 0
    try:
        world = make_world(base / "shared-world")
        for doc in args.docs or doc_paths():
            print(f"== {doc}", flush=True)
            run = DocRun(doc, base / doc.stem, world, base / "cache")

            def echo(o: Outcome) -> None:
                note = f" ({o.detail})" if o.detail else ""
                print(f"  {o.block.where:28} {o.status:9} {o.seconds:6.1f}s{note}", flush=True)
            try:
                run.run(echo)
            except DocError as e:
                failed += 1
                print(f"  FAILED: {e}", flush=True)
    finally:
        if args.keep:
            print(f"directories kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
