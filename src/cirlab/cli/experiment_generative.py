"""``cirlab experiment generative``: the world comparison of every registered zero-shot method.

Every trainer of ``ZEROSHOT_TRAINERS`` that is asked for (default: all of them, found by
importing every module of ``cirlab.train`` and ``cirlab.methods``, so methods added later
take part without this file knowing them) is trained on ``WORLD/train`` once per seed; the
untrained methods (``image``, ``text``, ``sum``, ``searle-oti``) are evaluated once (they do
not depend on the seed). Everything is evaluated on ``WORLD/test`` with ``evaluate_methods``.

Order: ``pic2word``, ``searle``, ``lincir`` first (later trainers may reuse them through
``ctx.trained``), then the others by name; a trainer function with a ``requires`` attribute
(names of trainers) is trained after them, and they are added to the run when missing.

Groups: add / remove / attribute (colour + shape + size) / move / two edits, recomputed from
the saved rankings (``OUT/rankings/seed-S/NAME.json``); overall = all queries. Writes
``results.json`` + ``results.md`` (mean ± sample std over seeds) to ``--out`` and, with
``--report PREFIX``, ``PREFIX.json`` / ``PREFIX.md``. A trainer or method that fails is listed
under "failures" in both files and on stderr, and the command then exits with status 1.
After a success a trainer's directory gets ``zeroshot-spec.json``; ``--resume`` reuses it
(same seed, ``--quick`` and options) instead of training again, e.g. to add seeds to a run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import pkgutil
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CirlabError
from .common import split_methods, write_text_atomic

UNTRAINED = ("image", "text", "sum", "searle-oti:50")
FIRST = ("pic2word", "searle", "lincir")
METRICS = ("recall@1", "recall@5", "recall@10", "recall@50", "map@10")
GROUP_OF_KIND = {"add": "add", "remove": "remove", "colour": "attribute", "shape": "attribute",
                 "size": "attribute", "move": "move", "two edits": "two edits"}
GROUPS = ("all", "add", "remove", "attribute", "move", "two edits")
QUICK_QUERIES = 60
SPEC_FILE = "zeroshot-spec.json"  # written into a trainer's directory after it succeeded


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.choices.get("experiment")  # `cirlab experiment` may exist already (experiment.py)
    if p is None:
        p = sub.add_parser("experiment", help="reproducible experiments")
        esub = p.add_subparsers(dest="experiment", metavar="NAME")
        esub.required = True
    else:
        esub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    g = esub.add_parser("generative", help="train every registered zero-shot method on world/train, compare on "
                                           "world/test per edit-kind group, mean over seeds",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--out", required=True, type=Path, help="checkpoints, rankings and results go here")
    g.add_argument("--world", type=Path, default=None, help="world root (train/ and test/); generated into OUT/world "
                                                            "when missing")
    g.add_argument("--small", type=int, default=None, help="generate a miniature world with N test queries")
    g.add_argument("--world-seed", type=int, default=0, help="seed of a generated world")
    g.add_argument("--quick", action="store_true", help=f"smoke run: small trainer budgets, a {QUICK_QUERIES}-query "
                                                        "world unless --world/--small, searle-oti:5")
    g.add_argument("--backbone", default="tiny:world")
    g.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (e.g. 0 1 2)")
    g.add_argument("--trainers", default=None, help="comma-separated zero-shot trainers (default: all registered)")
    g.add_argument("--untrained", default=None, help=f"comma-separated untrained method specs "
                                                     f"(default: {','.join(UNTRAINED)}; '' for none)")
    g.add_argument("--options", default=None, help="JSON object of per-trainer options, e.g. "
                                                   "'{\"predicir\": {\"steps\": 500}}' (ctx.options)")
    g.add_argument("--fail-fast", action="store_true", help="stop at the first failing trainer")
    g.add_argument("--resume", action="store_true", help="reuse a trainer's result from an earlier run into the same "
                                                         f"--out (its OUT/seed-S/NAME/{SPEC_FILE}) when the budget "
                                                         "(--quick, its options) is the same")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--report", type=Path, default=None, help="also write PREFIX.json and PREFIX.md (e.g. docs/...)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.set_defaults(func=run_generative)


# ---- discovery and ordering -----------------------------------------------------------------------

def discover_trainers() -> list[str]:
    """Import every module of cirlab.train and cirlab.methods (they register trainers); return import failures."""
    failures = []
    for pkg_name in ("cirlab.train", "cirlab.methods"):
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + ".",
                                          onerror=lambda name: failures.append(f"{name}: package failed to import")):
            if info.name in sys.modules:
                continue
            try:
                importlib.import_module(info.name)
            except Exception as e:  # noqa: BLE001 - a broken module must not hide the others; it is reported
                failures.append(f"{info.name}: {type(e).__name__}: {e}")
    return failures


def order_trainers(requested: Sequence[str], registry: Any) -> tuple[list[str], list[str]]:
    """(trainers in training order, names added because a requested one requires them)."""
    unknown = [n for n in requested if n not in registry]
    if unknown:
        raise CirlabError(f"--trainers: unknown zero-shot trainer(s) {unknown}; registered: "
                          f"{', '.join(registry.names()) or '(none)'}")
    wanted, added = list(dict.fromkeys(requested)), []
    i = 0
    while i < len(wanted):
        for dep in getattr(registry.get(wanted[i]), "requires", ()) or ():
            if dep not in registry:
                raise CirlabError(f"zero-shot trainer {wanted[i]!r} requires {dep!r}, which is not registered")
            if dep not in wanted:
                wanted.append(dep)
                added.append(dep)
        i += 1
    rank = {n: (FIRST.index(n), n) if n in FIRST else (len(FIRST), n) for n in wanted}
    ordered: list[str] = []
    pending = sorted(wanted, key=lambda n: rank[n])
    while pending:
        for n in pending:
            deps = set(getattr(registry.get(n), "requires", ()) or ())
            if deps <= set(ordered):
                ordered.append(n)
                pending.remove(n)
                break
        else:
            raise CirlabError(f"zero-shot trainers {pending}: circular 'requires'")
    return ordered, added


# ---- metrics --------------------------------------------------------------------------------------

def group_metrics(rankings: dict[str, list[str]], triplets: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Metrics per group (and "all") from rankings by triplet id."""
    from ..eval.metrics import grouped_metrics

    trips = [t for t in triplets if t.targets]
    missing = [t.id for t in trips if t.id not in rankings]
    if missing:
        raise CirlabError(f"rankings lack {len(missing)} test triplets (first: {missing[:3]})")
    kinds = [str(t.meta.get("kind", "")) for t in trips]
    unknown = sorted({k for k in kinds if k not in GROUP_OF_KIND})
    if unknown:
        raise CirlabError(f"test triplets of unknown edit kind(s) {unknown}; known: {', '.join(GROUP_OF_KIND)}")
    per = grouped_metrics([rankings[t.id] for t in trips], [t.targets for t in trips],
                          [GROUP_OF_KIND[k] for k in kinds], recall_ks=(1, 5, 10, 50), map_ks=(10,))
    return {g: per[g] for g in GROUPS if g in per}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def aggregate(per_seed: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """{seed: {group: metrics}} -> {group: {metric: {mean, std, n}}}."""
    seeds = sorted(per_seed)
    out: dict[str, dict[str, Any]] = {}
    for g in GROUPS:
        if g not in per_seed[seeds[0]]:
            continue
        out[g] = {"queries": per_seed[seeds[0]][g]["queries"]}
        for m in METRICS:
            mean, std = mean_std([per_seed[s][g][m] for s in seeds])
            out[g][m] = {"mean": round(mean, 4), "std": round(std, 4), "n": len(seeds)}
    return out


# ---- the command ----------------------------------------------------------------------------------

def command_line(args: argparse.Namespace) -> str:
    parts = ["cirlab", "experiment", "generative", "--out", str(args.out)]
    for flag in ("world", "small", "world_seed", "backbone", "trainers", "untrained", "options", "threads", "report"):
        v = getattr(args, flag)
        if v is not None:
            parts += [f"--{flag.replace('_', '-')}", str(v)]
    parts += ["--seeds", *map(str, args.seeds)]
    parts += [f for f, on in (("--quick", args.quick), ("--fail-fast", args.fail_fast), ("--resume", args.resume))
              if on]
    return shlex.join(parts)


def _failure(failures: list[dict[str, Any]], what: str, name: str, seed: int | None, err: BaseException) -> None:
    tb = traceback.format_exception(type(err), err, err.__traceback__)
    entry = {"stage": what, "name": name, "seed": seed, "error": f"{type(err).__name__}: {err}",
             "traceback": "".join(tb[-6:])}
    failures.append(entry)
    print(f"cirlab experiment generative: FAILED {what} {name!r}" + (f" (seed {seed})" if seed is not None else "")
          + f": {entry['error']}", file=sys.stderr)


def _previous(out: Path, budget: dict[str, Any]) -> dict[str, Any] | None:
    """The record of an earlier successful training into ``out`` with the same budget, if any."""
    p = out / SPEC_FILE
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    return rec if all(rec.get(k) == v for k, v in budget.items()) and isinstance(rec.get("spec"), str) else None


def _world(args: argparse.Namespace) -> Path:
    from ..world import WorldConfig, generate_world

    world = args.world or args.out / "world"
    if not (world / "train").is_dir() or not (world / "test").is_dir():
        if args.world is not None and world.exists():
            raise CirlabError(f"--world {world}: needs train/ and test/ sub-directories")
        small = args.small or (QUICK_QUERIES if args.quick else None)
        cfg = WorldConfig(seed=args.world_seed)
        generate_world(world, cfg.small(small) if small else cfg, ("train", "test"), progress=not args.no_progress)
    if not (world / "test" / "triplets.jsonl").is_file():
        raise CirlabError(f"{world}/test: no triplets.jsonl; --world must be a world root with train/ and test/")
    return world


def run_generative(args: argparse.Namespace) -> int:
    import torch

    from ..backbones import create_backbone
    from ..data import load_dataset
    from ..eval.evaluate import evaluate_methods
    from ..methods import create_method
    from ..train.zeroshot import ZEROSHOT_TRAINERS, ZeroShotContext

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    options = json.loads(args.options) if args.options else {}
    if not isinstance(options, dict):
        raise CirlabError(f"--options {args.options!r}: must be a JSON object")
    import_failures = discover_trainers()
    for f in import_failures:
        print(f"cirlab experiment generative: WARNING module failed to import (its trainers are missing): {f}",
              file=sys.stderr)
    requested = ([n.strip() for n in args.trainers.split(",") if n.strip()] if args.trainers is not None
                 else ZEROSHOT_TRAINERS.names())
    trainers, added = order_trainers(requested, ZEROSHOT_TRAINERS)
    untrained = (list(UNTRAINED) if args.untrained is None
                 else split_methods(args.untrained))
    if args.quick and args.untrained is None:
        untrained = [("searle-oti:5" if s.startswith("searle-oti") else s) for s in untrained]
    world = _world(args)
    backbone = create_backbone(args.backbone)
    test = load_dataset(world / "test")
    failures: list[dict[str, Any]] = [{"stage": "import", "name": f.split(":")[0], "seed": None, "error": f,
                                       "traceback": ""} for f in import_failures]
    progress = not args.no_progress

    runs: list[tuple[str, str, int | None]] = []  # (display name, spec, seed or None for untrained)
    training: dict[str, dict[str, Any]] = {}
    for seed in args.seeds:
        trained: dict[str, str] = {}
        for name in trainers:
            out = args.out / f"seed-{seed}" / name
            out.mkdir(parents=True, exist_ok=True)
            ctx = ZeroShotContext(backbone, world, out, seed=seed, quick=args.quick, progress=progress,
                                  trained=dict(trained), options=options)
            t0 = time.time()
            budget = {"quick": args.quick, "options": options.get(name), "seed": seed}
            record = _previous(out, budget) if args.resume else None
            print(f"== {'reuse' if record else 'train'} {name} (seed {seed})", file=sys.stderr)
            try:
                torch.manual_seed(seed)
                spec = record["spec"] if record else ZEROSHOT_TRAINERS.get(name)(ctx)
                if not isinstance(spec, str) or not spec:
                    raise CirlabError(f"trainer {name!r} returned {spec!r}, not a method spec string")
                create_method(spec, backbone)  # a bad checkpoint fails here, not in the middle of evaluation
            except Exception as e:  # noqa: BLE001 - any trainer error is reported, the others go on
                _failure(failures, "train", name, seed, e)
                if args.fail_fast:
                    break
                continue
            seconds = record["seconds"] if record else round(time.time() - t0, 1)
            if not record:
                write_text_atomic(out / SPEC_FILE, json.dumps({"trainer": name, "spec": spec, "seconds": seconds,
                                                           **budget}))
            trained[name] = spec
            training[f"{name}/seed-{seed}"] = {"spec": spec, "seconds": seconds, "reused": bool(record)}
            runs.append((name, spec, seed))
        if args.fail_fast and failures:
            break
    runs += [(spec, spec, None) for spec in untrained]

    results: dict[str, dict[str, Any]] = {}  # display name -> {"spec", "per_seed": {seed: {...}}}
    rank_dir = args.out / "rankings"
    for name, spec, seed in ([] if args.fail_fast and failures else runs):
        try:
            (res,) = evaluate_methods(test, backbone, [spec], args.out / "index", progress=progress)
            groups = group_metrics(res.rankings, test.triplets)
            for m in METRICS:  # the regrouped overall must equal evaluate's own numbers
                if abs(groups["all"][m] - res.metrics[m]) > 0.006:
                    raise CirlabError(f"{spec}: overall {m} {groups['all'][m]:.4f} recomputed from rankings differs "
                                      f"from evaluate's {res.metrics[m]}")
        except Exception as e:  # noqa: BLE001 - reported as a failure, the others go on
            _failure(failures, "evaluate", name, seed, e)
            continue
        tag = f"seed-{seed}" if seed is not None else "untrained"
        rpath = rank_dir / tag / f"{name.replace(':', '_').replace('/', '_')}.json"
        write_text_atomic(rpath, json.dumps(res.rankings))
        entry = results.setdefault(name, {"trained": seed is not None, "specs": {}, "per_seed": {}})
        key = str(seed if seed is not None else "-")
        entry["specs"][key] = spec
        entry["per_seed"][key] = {"evaluate": {"metrics": res.metrics, "per_kind": res.per_kind},
                                  "groups": groups, "rankings": str(rpath), "seconds": round(res.seconds, 1)}
    for entry in results.values():
        entry["aggregate"] = aggregate({k: v["groups"] for k, v in entry["per_seed"].items()})

    payload = {"command": command_line(args), "backbone": backbone.spec, "world": str(world),
               "train_split": str(world / "train"), "test_split": str(world / "test"),
               "queries": len([t for t in test.triplets if t.targets]), "gallery": len(test.gallery),
               "seeds": list(args.seeds), "quick": args.quick, "trainers": trainers, "added_for_requires": added,
               "registered_trainers": ZEROSHOT_TRAINERS.names(), "untrained": untrained, "options": options,
               "groups": {g: [k for k, v in GROUP_OF_KIND.items() if v == g] for g in GROUPS[1:]},
               "training": training, "results": results, "failures": failures,
               "seconds": round(time.time() - t_start, 1)}
    md = markdown(payload)
    write_text_atomic(args.out / "results.json", json.dumps(payload, indent=1))
    write_text_atomic(args.out / "results.md", md)
    if args.report:
        write_text_atomic(args.report.with_suffix(".json"), json.dumps(payload, indent=1))
        write_text_atomic(args.report.with_suffix(".md"), md)
    print(md)
    if failures:
        print(f"cirlab experiment generative: {len(failures)} failure(s); see 'failures' in {args.out / 'results.json'}",
              file=sys.stderr)
        return 1
    return 0


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell(v: dict[str, Any]) -> str:
    return f"{v['mean']:.2f} ± {v['std']:.2f}" if v["n"] > 1 else f"{v['mean']:.2f}"


def markdown(payload: dict[str, Any]) -> str:
    res = payload["results"]
    seeds = " ".join(map(str, payload["seeds"]))
    intro = (f"Backbone `{payload['backbone']}`, world test split `{payload['test_split']}` ({payload['queries']} "
             f"queries, gallery {payload['gallery']}); trained methods on `{payload['train_split']}` without its "
             f"triplets, seeds {seeds}: mean ± sample std over seeds; untrained methods do not depend on the seed "
             f"(n = 1). Reference removed from rankings; metrics in percent.")
    out = [intro, "",
           f"Command: `{payload['command']}`", ""]
    if payload["quick"]:
        out += ["**Quick smoke run** (tiny budgets): the numbers say nothing about the methods.", ""]
    groups = [g for g in GROUPS if any(g in r["aggregate"] for r in res.values())]
    for g in groups:
        kinds = payload["groups"].get(g)
        q = next((r["aggregate"][g]["queries"] for r in res.values() if g in r["aggregate"]), 0)
        title = "Overall" if g == "all" else f"{g} ({' + '.join(kinds)})" if kinds and len(kinds) > 1 else g
        out += [f"**{title}**, {q} queries:", "", _row(["method", "seeds", *METRICS]), _row(["---"] * (len(METRICS) + 2))]
        for name, r in res.items():
            a = r["aggregate"].get(g)
            if a:
                out.append(_row([name, str(a[METRICS[0]]["n"]), *(_cell(a[m]) for m in METRICS)]))
        out.append("")
    if payload["failures"]:
        out += ["**Failures** (not in the tables above):", ""]
        out += [f"- {f['stage']} `{f['name']}`" + (f" seed {f['seed']}" if f["seed"] is not None else "")
                + f": {f['error']}" for f in payload["failures"]]
        out.append("")
    return "\n".join(out)

