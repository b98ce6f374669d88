"""Start-up time of the ``cirlab`` command against ``python -c pass`` (and ``import torch``), in one run.

    python benchmarks/startup.py            # 7 alternating rounds, median of each
    python benchmarks/startup.py --quick    # 3 rounds

Each command runs in a fresh interpreter (``python -m cirlab ...``); the commands and the two references
are run alternately, round after round, so load from other processes hits them alike, and the median of
each is reported, with the overhead over ``python -c pass``. Goal: ``--help``, ``--version`` and
``backbones`` under 0.5 s (none of them imports torch; ``tests/test_startup.py`` checks that).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine  # noqa: E402

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "cirlab --help": [sys.executable, "-m", "cirlab", "--help"],
    "cirlab --version": [sys.executable, "-m", "cirlab", "--version"],
    "cirlab backbones": [sys.executable, "-m", "cirlab", "backbones"],
    "cirlab methods": [sys.executable, "-m", "cirlab", "methods"],
}
GOAL_S = 0.5
GOAL = ("cirlab --help", "cirlab --version", "cirlab backbones")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    run = _machine.start("startup", args)
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(rounds):
        for name, cmd in COMMANDS.items():
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["python -c pass"])
    print(f"\n| command | median s | over `python -c pass` s | goal |")
    print("|---|---:|---:|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        goal = (f"< {GOAL_S} s: {'met' if med < GOAL_S else 'MISSED'}") if name in GOAL else ""
        print(f"| `{name}` | {med:.3f} | {med - base:+.3f} | {goal} |")
    _machine.finish(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
