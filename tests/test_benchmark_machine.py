"""The benchmarks' verdict: a run is comparable unless *other* processes took CPU while it ran."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def machine():
    spec = importlib.util.spec_from_file_location("_machine", ROOT / "benchmarks" / "_machine.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_machine"] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("_machine", None)


def test_others_share_by_hand(machine):
    # 10 s on 2 CPUs = 20 CPU-s of capacity; the machine was busy 12 CPU-s, 7 of them ours -> 5 / 20
    assert machine.others_share(12.0, 7.0, 10.0, 2) == pytest.approx(0.25)
    # the run itself keeping both CPUs busy leaves nothing to others, whatever the load average says
    assert machine.others_share(20.0, 20.0, 10.0, 2) == 0.0
    # clock granularity can make own > machine by a tick: never negative
    assert machine.others_share(3.99, 4.0, 10.0, 2) == 0.0


def test_run_is_comparable_only_below_the_limit(machine):
    run = machine.Run("x", "cpu", 2, (5.0, 5.0, 5.0), {}, {})
    run.others = machine.OTHERS_LIMIT
    assert run.comparable  # a high load average alone no longer condemns a run
    run.others = machine.OTHERS_LIMIT + 0.01
    assert not run.comparable
    run.others = None  # no /proc/stat: the load-average rule
    run.load_end = (0.2, 0.2, 0.2)
    assert not run.comparable
    run.load_start = (0.3, 0.3, 0.3)
    assert run.comparable


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc/stat")
def test_another_process_burning_cpu_is_seen(machine):
    """A CPU-bound process that the benchmark has not waited for counts as another process's load."""
    import os
    import time

    with open(os.devnull, "w") as devnull:
        run = machine.start("t", [], file=devnull)
    hog = subprocess.Popen([sys.executable, "-c",
                            "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass"])
    try:
        t0 = time.monotonic()
        # sample once it has exited but before it is reaped (a zombie): a reaped child would count as ours
        while time.monotonic() - t0 < 60:
            with open(f"/proc/{hog.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.05)
        end = machine.cpu_sample()
    finally:
        hog.wait()
    share = run.measure_others(end)
    capacity = (end.wall - run.cpu_start.wall) * (os.cpu_count() or 1)
    assert share is not None and share * capacity >= 1.4  # at least the hog's 1.5 CPU-s, less clock ticks
