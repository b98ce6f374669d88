"""What every benchmark records beside its figures: the machine and how busy it was.

Each script under ``benchmarks/`` ends with ``sys.exit(_machine.run(main))``, which prints the machine
line (and a warning when it is busy) before ``main`` and the load at the end with the verdict after it;
or calls ``start(name)`` / ``finish(run)`` itself.

The header records the CPU model, cores, the load average (1/5/15 min), thread settings
(torch intra-op threads, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
``OPENBLAS_CORETYPE``) and library versions (read from package metadata, nothing is imported).
A run is **not comparable** when other processes used more than a quarter of the machine's CPU time
while it ran: absolute figures (q/s, images/s) are then low by an unknown factor. That share is
measured, not guessed from the load average: the machine's busy CPU time from ``/proc/stat`` over the
run, minus the CPU time of the benchmark itself and its waited-for children (``getrusage``), divided by
wall time x CPUs. The load average cannot tell: a benchmark that keeps both cores busy raises it to
about 2 by itself, and it lags by minutes, so a run started right after another one looked busy.
Where ``/proc/stat`` is missing (not Linux) the old rule applies: 1-minute load average above half the
cores at the start or the end. Ratios measured alternately within the run are less affected by other
processes, which is why every script prints them; the verdict still says the run was busy.
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
    """The machine is busy when the 1-minute load average exceeds half its cores (fallback rule)."""
    return load1 > n_cores / 2


OTHERS_LIMIT = 0.25  # share of the machine's CPU time other processes may use in a comparable run


@dataclass(frozen=True)
class CpuSample:
    """Busy CPU seconds of the whole machine and of this process (+ waited-for children) at one instant."""
    wall: float
    machine_busy: float | None  # None where /proc/stat is unreadable
    own: float


def machine_busy_seconds() -> float | None:
    """Busy CPU time of all CPUs since boot (user+nice+system+irq+softirq+steal), in seconds."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]] + [0] * max(0, 9 - len(fields))
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_sample() -> CpuSample:
    return CpuSample(time.monotonic(), machine_busy_seconds(), own_seconds())


def others_share(busy_delta: float, own_delta: float, wall: float, n_cpus: int) -> float:
    """Share of the machine's CPU capacity (``wall`` x ``n_cpus``) used by processes other than this run."""
    if wall <= 0 or n_cpus <= 0:
        return 0.0
    return max(0.0, busy_delta - own_delta) / (wall * n_cpus)


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
    others: float | None = None  # share of the machine's CPU other processes used during the run
    cpu_start: CpuSample | None = field(default=None, repr=False)

    @property
    def comparable(self) -> bool:
        if self.others is not None:
            return self.others <= OTHERS_LIMIT
        loads = [self.load_start[0]] + ([self.load_end[0]] if self.load_end else [])
        return not any(busy(x, self.cores) for x in loads)

    def measure_others(self, end: CpuSample) -> float | None:
        a = self.cpu_start
        if a is None or a.machine_busy is None or end.machine_busy is None:
            return None
        return others_share(end.machine_busy - a.machine_busy, end.own - a.own, end.wall - a.wall,
                            os.cpu_count() or self.cores)

    def to_json(self) -> dict[str, Any]:
        out = {**asdict(self), "comparable": self.comparable}
        out.pop("cpu_start", None)
        return out


def _fmt_load(x: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in x)


def start(name: str, args: Any = None, file=sys.stdout) -> Run:
    """Record the machine, print one header line, warn on stderr when it is busy."""
    recorded = dict(vars(args)) if hasattr(args, "__dict__") else {"argv": list(args or sys.argv[1:])}
    run = Run(name, cpu_model(), cores(), load(), threads(), versions(), recorded, cpu_start=cpu_sample())
    libs = " ".join(f"{k} {v}" for k, v in run.versions.items())
    thr = " ".join(f"{k}={v}" for k, v in run.threads.items()) or "defaults"
    print(f"# {name}: {run.cpu}, {run.cores} cores, load {_fmt_load(run.load_start)} (1/5/15 min); "
          f"threads: {thr}; {libs}", file=file, flush=True)
    if busy(run.load_start[0], run.cores):
        print(f"WARNING: load average {run.load_start[0]:.2f} is above half the {run.cores} cores: if other "
              f"processes keep the machine busy during the run, its absolute figures are NOT comparable "
              f"(the verdict at the end measures that; ratios within the run are less affected)",
              file=sys.stderr, flush=True)
    return run


def finish(run: Run, file=sys.stdout, json_path: str | None = None) -> Run:
    """Record the load at the end, print the verdict (and write the run's record as JSON if asked)."""
    run.load_end = load()
    run.others = run.measure_others(cpu_sample())
    verdict = "comparable (quiet machine)" if run.comparable else "NOT comparable (busy machine)"
    others = (f"other processes used {100 * run.others:.0f}% of the CPU during the run (limit "
              f"{100 * OTHERS_LIMIT:.0f}%); " if run.others is not None else "")
    print(f"# {run.name}: {time.time() - run.started:.0f} s; load at start {_fmt_load(run.load_start)}, "
          f"at end {_fmt_load(run.load_end)}; {others}{verdict}", file=file, flush=True)
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
