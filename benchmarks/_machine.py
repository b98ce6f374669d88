"""What every benchmark records beside its figures: the machine and how busy it was.

Each script under ``benchmarks/`` ends with ``sys.exit(_machine.run(main))``, which prints the machine
line (and a warning when it is busy) before ``main`` and the load at the end with the verdict after it;
or calls ``start(name)`` / ``finish(run)`` itself.

The header records the CPU model, cores, the load average (1/5/15 min), thread settings
(torch intra-op threads, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
``OPENBLAS_CORETYPE``) and library versions (read from package metadata, nothing is imported).
A run is **not comparable** when the 1-minute load average is above half the cores at its start or
at its end: other processes then took a share of the CPU, so absolute figures (q/s, images/s) are
low by an unknown factor. Ratios measured alternately within the run are less affected, which is
why every script prints them; the verdict still says the run was busy.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, Callable

LIBRARIES = ("cirlab", "torch", "numpy", "faiss-cpu", "pillow", "transformers", "pymilvus")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def busy(load1: float, n_cores: int) -> bool:
    """The machine is busy when the 1-minute load average exceeds half its cores."""
    return load1 > n_cores / 2


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def threads() -> dict[str, Any]:
    out: dict[str, Any] = {v: os.environ[v] for v in THREAD_VARS if v in os.environ}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.get_num_threads()
    return out


@dataclass
class Run:
    name: str
    cpu: str
    cores: int
    load_start: tuple[float, float, float]
    threads: dict[str, Any]
    versions: dict[str, str]
    args: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    load_end: tuple[float, float, float] | None = None

    @property
    def comparable(self) -> bool:
        loads = [self.load_start[0]] + ([self.load_end[0]] if self.load_end else [])
        return not any(busy(x, self.cores) for x in loads)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "comparable": self.comparable}


def _fmt_load(x: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in x)


def start(name: str, args: Any = None, file=sys.stdout) -> Run:
    """Record the machine, print one header line, warn on stderr when it is busy."""
    recorded = dict(vars(args)) if hasattr(args, "__dict__") else {"argv": list(args or sys.argv[1:])}
    run = Run(name, cpu_model(), cores(), load(), threads(), versions(), recorded)
    libs = " ".join(f"{k} {v}" for k, v in run.versions.items())
    thr = " ".join(f"{k}={v}" for k, v in run.threads.items()) or "defaults"
    print(f"# {name}: {run.cpu}, {run.cores} cores, load {_fmt_load(run.load_start)} (1/5/15 min); "
          f"threads: {thr}; {libs}", file=file, flush=True)
    if busy(run.load_start[0], run.cores):
        print(f"WARNING: load average {run.load_start[0]:.2f} is above half the {run.cores} cores: the machine is "
              f"busy, so absolute figures of this run are NOT comparable (ratios within the run are less "
              f"affected)", file=sys.stderr, flush=True)
    return run


def finish(run: Run, file=sys.stdout, json_path: str | None = None) -> Run:
    """Record the load at the end, print the verdict (and write the run's record as JSON if asked)."""
    run.load_end = load()
    verdict = "comparable (quiet machine)" if run.comparable else "NOT comparable (busy machine)"
    print(f"# {run.name}: {time.time() - run.started:.0f} s; load at start {_fmt_load(run.load_start)}, "
          f"at end {_fmt_load(run.load_end)}; {verdict}", file=file, flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(run.to_json(), f, indent=1)
    return run


def run(main: Callable[[], Any], name: str | None = None) -> int:
    """``start``, ``main()``, ``finish``; returns ``main``'s exit code (None = 0)."""
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        return int(main() or 0)
    record = start(name or os.path.splitext(os.path.basename(sys.argv[0]))[0])
    rc = main()
    finish(record)
    return int(rc or 0)
