"""Training throughput (samples/s) of cirlab's trainers, before and after a revision, in one run.

Each **case** (``CASES``, a registry: ``@case("name", help=...)``) trains one trainer for a short,
fixed budget on a small generated world and reports how many training samples it processed and in
how many seconds. The same case runs twice per round, each in its own subprocess:

* **before**: the library as of ``--before REV`` (default ``BEFORE``, the commit before the training
  speed-ups), exported with ``git archive`` into a temp dir and imported from there
  (``PYTHONPATH=<export>/src``);
* **after**: the library of this checkout (``src/``).

Rounds alternate before / after (``--rounds``, best of each side kept), so a change in the machine's
load hits both sides alike; the table gives samples/s of each side and the ratio after / before
(goal: >= 2), and the same ratio per CPU second of the measuring process (with ``--threads 1`` the
least load-sensitive figure on a shared machine). A case only calls public training entry points that both revisions have, so it
measures the library, not the script. Each subprocess first runs the case once with a tiny budget
(imports, one-off set-up, caches of its own temp dir warm), then times one run at the case's budget.

Cases (``--cases``, default all; ``--list`` prints them):

* ``pic2word``, ``searle``, ``lincir``: one ``train_method`` call on the world's first 2,048 train images,
  their image features already encoded (as in an experiment, where the three share one encoding);
  samples = steps x batch (SEARLE: + OTI images x OTI steps). LinCIR's call includes encoding its captions
  (``lincir``: with nothing cached, a first run; ``lincir-rerun``: with the caches its warm-up left, as a
  later seed on the same world finds them);
* ``backbone``: one ``train_backbone`` call (image loading, vocabulary, training, saving), both towers
  trained on the world captions (the ``tiny:world`` recipe); samples = steps x batch;
* ``backbone-lit``: the same with the image tower locked (LiT, ``tiny:alt``'s recipe: alt-text, CLIP
  text tower, the locked image features read from the case's cache written by its warm-up);
* ``fusion-diff-prior``, ``fusion-diff-adapter``: Fusion-Diff's two stages (``train_prior``,
  ``train_adapter``) at their default model sizes and batch 256, features encoded and synthetic
  triplets rendered before the clock starts (stage 2's call reads the cached image features and
  encodes the 1,000 triplet texts, about 5% of its time).
  ``...-bf16``: the same with ``precision="bf16"`` on the "after" side (the "before" revision has no
  such option and runs float32), i.e. what switching the option on gains.
* ``predicir``: ``train_predicir`` (default model, batch 64) on 1,024 pre-encoded train images.

Options: ``--quick`` (smaller budgets, 1 round: about a minute per case on an idle 2-core machine),
``--threads`` (torch threads in every subprocess, default 1, as the world experiments' documented
commands run), ``--world DIR`` (reuse a world instead of generating one), ``--backbone SPEC``.
Every cache a case writes lives in the run's temp dir.

    .venv/bin/python benchmarks/train_throughput.py [--quick] [--cases pic2word,...] [--before REV]
        [--rounds 2] [--threads 1] [--world DIR] [--backbone tiny:world]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]

#: the last commit before the training speed-ups: the default "before" of every case
BEFORE = "d1aaaa7c1b15fc3c69ab3877a91380b34eeccd75"


@dataclass
class Budget:
    """What a case gets: the world, the backbone spec, quick or full budget, a scratch dir of its own."""

    world: Path
    backbone: str
    quick: bool
    scratch: Path
    warmup: bool = False  # the untimed first run: the smallest budget that exercises every code path


@dataclass
class Case:
    name: str
    run: Callable[[Budget], dict[str, Any]]  # -> {"samples": int, "seconds": float, ...}
    help: str


CASES: dict[str, Case] = {}


def case(name: str, help: str) -> Callable[[Callable[[Budget], dict[str, Any]]], Callable[[Budget], dict[str, Any]]]:
    """Register a case: a function of a ``Budget`` returning ``{"samples": n, "seconds": s}``."""
    def deco(fn: Callable[[Budget], dict[str, Any]]) -> Callable[[Budget], dict[str, Any]]:
        if name in CASES:
            raise ValueError(f"case {name!r} registered twice")
        CASES[name] = Case(name, fn, help)
        return fn
    return deco


def timed(fn: Callable[[], Any]) -> dict[str, float]:
    """Wall seconds and CPU seconds of this process (with one thread, CPU time is what the machine's other
    work takes away least)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c}


# -- cases -------------------------------------------------------------------------------------------------------

_TI_DATA: dict[str, Any] = {}


def _ti(method: str, b: Budget, steps: int, batch: int, images: int, **cfg: Any) -> dict[str, Any]:
    """One ``train_method`` call of a textual-inversion trainer on encoded train images."""
    from cirlab.backbones import create_backbone
    from cirlab.train.textual_inversion import MethodTrainConfig, TrainingData, train_method

    key = f"{b.backbone}|{b.world}|{images}"
    if key not in _TI_DATA:  # one encoding per process (both revisions keep encoded features in TrainingData)
        _TI_DATA.clear()
        _TI_DATA[key] = (create_backbone(b.backbone), TrainingData(b.world / "train", images))
    backbone, data = _TI_DATA[key]
    mcfg = MethodTrainConfig(method=method, steps=steps, batch_size=batch, prompts="world", log_every=10_000, **cfg)
    return {"samples": steps * batch, **timed(lambda: train_method(backbone, data, mcfg, None, progress=False))}


@case("pic2word", help="Pic2Word phi on encoded train images (InfoNCE through the frozen text tower)")
def _pic2word(b: Budget) -> dict[str, Any]:
    steps = 2 if b.warmup else (15 if b.quick else 40)
    return _ti("pic2word", b, steps, 256, 2048)


@case("searle", help="SEARLE: OTI tokens for train images, then phi distilled from them (both timed)")
def _searle(b: Budget) -> dict[str, Any]:
    from cirlab.methods.textual_inversion.oti import OTIConfig

    steps, oti_images, oti_steps = (2, 64, 2) if b.warmup else ((10, 128, 10) if b.quick else (30, 256, 20))
    out = _ti("searle", b, steps, 256, 2048, oti_images=oti_images, oti=OTIConfig(steps=oti_steps))
    out["samples"] += oti_images * oti_steps
    return out


def _lincir(b: Budget, fresh_cache: bool) -> dict[str, Any]:
    steps = 2 if b.warmup else (8 if b.quick else 20)
    if fresh_cache and not b.warmup:  # nothing cached by an earlier run: the first run on a world
        os.environ["CIRLAB_CACHE"] = str(b.scratch / "fresh-cache")
    return _ti("lincir", b, steps, 256, 2048)


@case("lincir", help="LinCIR phi on the train captions, their text features encoded in the timed call")
def _lincir_first(b: Budget) -> dict[str, Any]:
    return _lincir(b, fresh_cache=True)


@case("lincir-rerun", help="the same with the cache an earlier run (the warm-up) left: another seed, same world")
def _lincir_rerun(b: Budget) -> dict[str, Any]:
    return _lincir(b, fresh_cache=False)


def _backbone(b: Budget, steps: int, **kw: Any) -> dict[str, Any]:
    """One ``train_backbone`` call (loads the train images, builds the vocabulary, trains, saves)."""
    from cirlab.train.backbone import BackboneTrainConfig, train_backbone

    cfg = BackboneTrainConfig(data=str(b.world / "train"), out=str(b.scratch / "tiny"), max_steps=steps,
                              batch_size=256, warmup_steps=2, **kw)
    return {"samples": steps * 256, **timed(lambda: train_backbone(cfg, progress=False))}


@case("backbone", help="tiny backbone, both towers trained (world captions, mean-pooled text tower)")
def _backbone_full(b: Budget) -> dict[str, Any]:
    return _backbone(b, 1 if b.warmup else (3 if b.quick else 8))


@case("backbone-lit", help="tiny backbone, LiT: locked tiny:world image tower (cached features), CLIP text tower "
                           "on alt-text")
def _backbone_lit(b: Budget) -> dict[str, Any]:
    return _backbone(b, 1 if b.warmup else (4 if b.quick else 10), captions="alttext", text_encoder="clip",
                     init_vision="tiny:world", lock_image=True, image_cache=str(b.scratch / "locked.safetensors"))


_GEN_DATA: dict[str, Any] = {}


def _once(key: str, make: Callable[[], Any]) -> Any:
    """One set-up per process and key (encoded features, a stage-1 prior, rendered triplets)."""
    if key not in _GEN_DATA:
        _GEN_DATA[key] = make()
    return _GEN_DATA[key]


def _precision(cfg_cls: type, precision: str) -> dict[str, Any]:
    """``{"precision": ...}`` when the revision's config has that field (the "before" side may not)."""
    from dataclasses import fields

    return {"precision": precision} if any(f.name == "precision" for f in fields(cfg_cls)) else {}


def _fd_pairs(b: Budget) -> tuple[Any, Any]:
    """(backbone, Fusion-Diff's encoded image-caption pairs of the world's train split)."""
    from cirlab.backbones import create_backbone
    from cirlab.train import fusion_diff as fd

    backbone = _once(f"bb|{b.backbone}", lambda: create_backbone(b.backbone))
    return backbone, _once(f"pairs|{b.world}", lambda: fd.pair_data(backbone, b.world / "train",
                                                                    b.scratch / "fd-cache", None, progress=False))


def _fd_prior(b: Budget, precision: str) -> dict[str, Any]:
    from cirlab.train import fusion_diff as fd

    backbone, data = _fd_pairs(b)
    steps = 2 if b.warmup else (60 if b.quick else 200)
    cfg = fd.PriorTrainConfig(steps=steps, log_every=10_000, save_every=0,
                              **_precision(fd.PriorTrainConfig, precision))
    return {"samples": steps * cfg.batch_size, **timed(lambda: fd.train_prior(backbone, data, cfg, None,
                                                                             progress=False))}


def _fd_adapter(b: Budget, precision: str) -> dict[str, Any]:
    from cirlab.train import fusion_diff as fd

    backbone, data = _fd_pairs(b)
    prior = _once("prior", lambda: fd.train_prior(backbone, data, fd.PriorTrainConfig(steps=2, save_every=0),
                                                  None, progress=False))
    train = b.world / "train"
    synth = _once("synth", lambda: fd.synthetic_triplets(b.scratch / "fd-synth", 1000, "world:real", 0,
                                                         fd.heldout_combos(train), fd.world_resolution(train),
                                                         progress=False))
    steps = 2 if b.warmup else (60 if b.quick else 200)
    cfg = fd.AdapterTrainConfig(triplets=1000, steps=steps, log_every=10_000, save_every=0,
                                **_precision(fd.AdapterTrainConfig, precision))
    return {"samples": steps * cfg.batch_size, **timed(lambda: fd.train_adapter(
        backbone, prior, synth, cfg, None, b.scratch / "fd-cache", progress=False))}


_FD_STAGES = {
    "fusion-diff-prior": (_fd_prior, "Fusion-Diff stage 1 (prior, default size, batch 256) on encoded train captions"),
    "fusion-diff-adapter": (_fd_adapter, "Fusion-Diff stage 2 (fusion + Control-Adapter, batch 256) on 1,000 encoded "
                                         "synthetic triplets; the stage-1 prior frozen"),
}
for _name, (_run, _help) in _FD_STAGES.items():
    case(_name, help=_help)(functools.partial(_run, precision="fp32"))
for _name in _FD_STAGES:
    case(f"{_name}-bf16", help=f"as {_name}, after: precision bf16 (before: fp32, which has no such option)")(
        functools.partial(_FD_STAGES[_name][0], precision="bf16"))


@case("predicir", help="PrediCIR (default model, batch 64): crops through the frozen image tower, predictor, "
                       "pseudo-word alignment through the text tower")
def _predicir(b: Budget) -> dict[str, Any]:
    from cirlab.backbones import create_backbone
    from cirlab.train.predicir import PrediCIRTrainConfig, WorldViewData, train_predicir

    backbone = _once(f"bb|{b.backbone}", lambda: create_backbone(b.backbone))
    data = _once(f"views|{b.world}", lambda: WorldViewData(b.world / "train", backbone, 1024, progress=False))
    steps = 2 if b.warmup else (12 if b.quick else 40)
    cfg = PrediCIRTrainConfig(steps=steps, log_every=10_000)
    return {"samples": steps * cfg.batch_size, **timed(lambda: train_predicir(backbone, data, cfg, None,
                                                                              progress=False))}


# -- driver ------------------------------------------------------------------------------------------------------

def measure(args: argparse.Namespace) -> None:
    """Subprocess side: run one case (warm-up, then timed) with whatever ``cirlab`` is on the path; print JSON."""
    import torch

    torch.set_num_threads(args.threads)
    b = Budget(Path(args.world), args.backbone, args.quick, Path(args.scratch), warmup=True)
    CASES[args.measure].run(b)
    b.warmup = False
    out = CASES[args.measure].run(b)
    import cirlab

    out["library"] = str(Path(cirlab.__file__).resolve().parents[1])
    print("RESULT " + json.dumps(out), flush=True)


def export(rev: str, dest: Path) -> Path:
    """``src/`` of ``rev`` into ``dest`` (git archive: the repository itself is not touched)."""
    full = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                          capture_output=True, text=True)
    if full.returncode != 0:
        sys.exit(f"--before {rev!r}: not a commit of {REPO} ({full.stderr.strip()})")
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", full.stdout.strip(), "src"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def run_case(name: str, src: Path, args: argparse.Namespace, world: Path, scratch: Path) -> dict[str, Any]:
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src), "CIRLAB_CACHE": str(scratch / "cache"),
           "CIRLAB_FEATURE_CACHE": str(scratch / "features.sqlite"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", name, "--world", str(world),
           "--scratch", str(scratch), "--threads", str(args.threads), "--backbone", args.backbone]
    if args.quick:
        cmd.append("--quick")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(scratch))
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"case {name} ({src}) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1][len("RESULT "):])
    if Path(out["library"]) != src.resolve():
        sys.exit(f"case {name}: imported cirlab from {out['library']}, expected {src}")
    return out


def make_world(root: Path, quick: bool) -> Path:
    from cirlab.world import WorldConfig, generate_world

    generate_world(root, WorldConfig(seed=0).small(120 if quick else 200), splits=("train",), progress=False)
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller budgets and world, 1 round")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all; --list shows them)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--before", default=BEFORE, help=f"the revision measured as 'before' (default {BEFORE[:12]})")
    ap.add_argument("--rounds", type=int, default=None, help="alternating before/after rounds (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each measurement (default 1)")
    ap.add_argument("--world", default=None, help="an existing world root (default: generate a small one)")
    ap.add_argument("--backbone", default="tiny:world", help="backbone of the textual-inversion cases")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.list:
        for c in CASES.values():
            print(f"{c.name:16s} {c.help}")
        return 0
    if args.measure:
        measure(args)
        return 0
    names = args.cases.split(",") if args.cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        sys.exit(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    rounds = args.rounds or (1 if args.quick else 2)
    sys.path.insert(0, str(REPO / "src"))
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        t = Path(tmp)
        before_src = export(args.before, t / "before")
        world = Path(args.world) if args.world else make_world(t / "world", args.quick)
        print(f"before: {args.before[:12]} (git archive)  after: {REPO} (working tree)  world: "
              f"{'generated' if not args.world else world}  threads {args.threads}  rounds {rounds}  "
              f"backbone {args.backbone}  {'quick' if args.quick else 'full'} budgets", flush=True)
        print("| case | samples/run | before samples/s | after samples/s | after / before | per CPU second: "
              "after / before |")
        print("|---|---:|---:|---:|---:|---:|", flush=True)
        for name in names:
            best: dict[str, float] = {}
            samples = 0
            for r in range(rounds):
                for side, src in (("before", before_src), ("after", REPO / "src")):
                    res = run_case(name, src, args, world, t / f"{name}-{side}-{r}")
                    samples = int(res["samples"])
                    best[side] = max(best.get(side, 0.0), res["samples"] / res["seconds"])
                    best[f"{side}-cpu"] = max(best.get(f"{side}-cpu", 0.0), res["samples"] / res["cpu_seconds"])
            print(f"| {name} | {samples:,} | {best['before']:,.0f} | {best['after']:,.0f} | "
                  f"{best['after'] / best['before']:.2f} | {best['after-cpu'] / best['before-cpu']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if "--measure" in sys.argv or "--list" in sys.argv:
        sys.exit(main())
    import _machine

    sys.exit(_machine.run(main))
