"""How long `cirlab eval-predictions` and `validate-submission` take on the real annotation files.

Writes random prediction files in the server formats for CIRR val (recall + recall_subset),
Fashion IQ val and CIRCO val, then times one `cirlab` process per command (start-up included)
and prints seconds per command and queries per second.

    .venv/bin/python benchmarks/bench_eval_predictions.py [--benchmarks DIR]   # default ../shared/benchmarks
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def random_files(bench: Path, out: Path) -> dict[str, tuple[list[str], int]]:
    rng = random.Random(0)
    runs: dict[str, tuple[list[str], int]] = {}
    caps = json.loads((bench / "cirr/captions/cap.rc2.val.json").read_text())
    names = list(json.loads((bench / "cirr/image_splits/split.rc2.val.json").read_text()))
    rec = {"version": "rc2", "metric": "recall"}
    sub = {"version": "rc2", "metric": "recall_subset"}
    for q in caps:
        rec[str(q["pairid"])] = rng.sample([n for n in names if n != q["reference"]], 50)
        sub[str(q["pairid"])] = rng.sample([m for m in q["img_set"]["members"] if m != q["reference"]], 3)
    (out / "cirr_r.json").write_text(json.dumps(rec))
    (out / "cirr_s.json").write_text(json.dumps(sub))
    runs["cirr"] = (["--predictions", str(out / "cirr_r.json"), "--subset-predictions", str(out / "cirr_s.json")],
                    len(caps))
    fiq, n = {}, 0
    for c in ("dress", "shirt", "toptee"):
        gallery = json.loads((bench / f"fashioniq/image_splits/split.{c}.val.json").read_text())
        entries = json.loads((bench / f"fashioniq/captions/cap.{c}.val.json").read_text())
        fiq[c] = [rng.sample(gallery, 50) for _ in entries]
        n += len(entries)
    (out / "fiq.json").write_text(json.dumps(fiq))
    runs["fashioniq"] = (["--predictions", str(out / "fiq.json")], n)
    queries = json.loads((bench / "circo/annotations/val.json").read_text())
    pool = list(range(1, 200000))
    (out / "circo.json").write_text(json.dumps({str(q["id"]): rng.sample(pool, 50) for q in queries}))
    runs["circo"] = (["--predictions", str(out / "circo.json")], len(queries))
    return runs


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "cirlab", *argv], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"cirlab {' '.join(argv)} failed:\n{res.stderr}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--benchmarks", type=Path, default=REPO.parent / "shared" / "benchmarks")
    args = ap.parse_args()
    base = timed(["--version"])
    print(f"cirlab start-up (--version): {base:.2f}s")
    with tempfile.TemporaryDirectory() as tmp:
        runs = random_files(args.benchmarks, Path(tmp))
        for name, (extra, n) in runs.items():
            s = timed(["eval-predictions", "--benchmark", name, "--split", "val", "--data-root",
                       str(args.benchmarks / name), *extra, "--json"])
            print(f"eval-predictions {name:9s} val: {n:5d} queries in {s:.2f}s ({n / s:,.0f} queries/s, "
                  f"{s / base:.1f}x start-up)")
    ex = args.benchmarks / "cirr/submission_examples"
    s = timed(["validate-submission", "--benchmark", "cirr", "--split", "test1", "--data-root",
               str(args.benchmarks / "cirr"), str(ex / "test1_pred_ranks_recall.json"),
               str(ex / "test1_pred_ranks_recall_subset.json")])
    print(f"validate-submission cirr test1 (2 official example files): {s:.2f}s ({s / base:.1f}x start-up)")


if __name__ == "__main__":
    import _machine

    sys.exit(_machine.run(main))
