"""``cirlab experiment zeroshot`` and ``calibrate``: Pic2Word, SEARLE and LinCIR on the world.

Each method trains on the world's *train* gallery (images or captions; never its
triplets), then every method and the baselines are evaluated on the *test* split
with ``evaluate_methods``. Writes ``results.json`` + ``results.md`` to ``--out``
and, with ``--report PREFIX``, the same as ``PREFIX.json`` / ``PREFIX.md``.
The experiment itself lives in ``cirlab.experiments.zeroshot``. ``calibrate`` evaluates the same
methods and the baselines on val and test beside the published ordering
(``cirlab.experiments.calibrate``).
"""
from __future__ import annotations

import argparse
import copy
import shlex
from pathlib import Path

from .common import experiment_subparsers


def register(sub: argparse._SubParsersAction) -> None:
    z = experiment_subparsers(sub).add_parser("zeroshot", help="train pic2word/searle/lincir on world/train, "
                                                               "evaluate on world/test")
    z.add_argument("--out", required=True, type=Path, help="checkpoints, index and results go here")
    z.add_argument("--world", type=Path, default=None, help="world root (train/ and test/); generated if missing "
                                                            "(default OUT/world)")
    z.add_argument("--small", type=int, default=None, help="generate a miniature world with N test queries")
    z.add_argument("--backbone", default="tiny:world")
    z.add_argument("--prompts", default="world", help="prompt preset or query template (recorded)")
    z.add_argument("--steps", type=int, default=500, help="training steps of each phi")
    z.add_argument("--batch-size", type=int, default=256)
    z.add_argument("--max-images", type=int, default=8192, help="train gallery entries used (images/captions)")
    z.add_argument("--oti-images", type=int, default=1024, help="SEARLE: images inverted for distillation")
    z.add_argument("--oti-steps", type=int, default=100, help="SEARLE: OTI steps when training")
    z.add_argument("--query-oti-steps", type=int, default=50, help="searle-oti at query time (0: skip it)")
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--threads", type=int, default=None, help="torch CPU threads (small models: 1 is often fastest)")
    z.add_argument("--report", type=Path, default=None, help="also write PREFIX.json and PREFIX.md (e.g. docs/...)")
    z.set_defaults(func=run_zeroshot)
    from ..experiments import calibrate

    c = experiment_subparsers(sub).add_parser(
        "calibrate", help="baselines + pic2word/searle/lincir on world val and test beside the published ordering",
        description=calibrate.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for action in z._actions:  # the same training and world options as zeroshot
        if action.dest == "backbone":  # calibration needs the language prior (docs/world.md)
            action = copy.copy(action)
            action.default = "tiny:alt-600"
        if action.dest not in ("help", "query_oti_steps"):
            c._add_action(action)
    c.set_defaults(func=run_calibrate)


FLAGS = ("world", "small", "backbone", "prompts", "steps", "batch_size", "max_images", "oti_images", "oti_steps",
         "query_oti_steps", "seed")


def command_line(args: argparse.Namespace, name: str = "zeroshot") -> str:
    parts = ["cirlab", "experiment", name, "--out", str(args.out)]
    for flag in (*FLAGS, "threads", "report"):
        v = getattr(args, flag, None)
        if v is not None:
            parts += [f"--{flag.replace('_', '-')}", str(v)]
    return shlex.join(parts)


def run_calibrate(args: argparse.Namespace) -> int:
    from ..experiments import write_results
    from ..experiments.calibrate import CalibrateConfig, markdown, run_calibrate as run
    from .common import set_threads

    set_threads(args.threads)
    cfg = CalibrateConfig(out=args.out, **{f: getattr(args, f) for f in FLAGS if f != "query_oti_steps"})
    payload = run(cfg, command_line(args, "calibrate"))
    md = markdown(payload)
    write_results(payload, md, args.out, args.report)
    print(md)
    return 0


def run_zeroshot(args: argparse.Namespace) -> int:
    from ..experiments import write_results
    from ..experiments.zeroshot import ZeroShotConfig, markdown, run_zeroshot as run
    from .common import set_threads

    set_threads(args.threads)
    cfg = ZeroShotConfig(out=args.out, **{f: getattr(args, f) for f in FLAGS})
    payload = run(cfg, command_line(args))
    md = markdown(payload)
    write_results(payload, md, args.out, args.report)
    print(md)
    return 0
