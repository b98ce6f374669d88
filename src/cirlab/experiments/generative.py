"""The world comparison of every registered zero-shot method (``cirlab experiment generative``).

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
(same seed, ``--quick``, options, backbone and train split: its gallery and images, ``train_identity``)
instead of training again, e.g. to add seeds to a run.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileutil import atomic_write_text
from ..errors import CirlabError
from . import mean_std, md_row as _row, write_results
from .zeroshot import ensure_world

UNTRAINED = ("image", "text", "sum", "searle-oti:50")
FIRST = ("pic2word", "searle", "lincir")
METRICS = ("recall@1", "recall@5", "recall@10", "recall@50", "map@10")
GROUP_OF_KIND = {"add": "add", "remove": "remove", "colour": "attribute", "shape": "attribute",
                 "size": "attribute", "move": "move", "two edits": "two edits"}
GROUPS = ("all", "add", "remove", "attribute", "move", "two edits")
QUICK_QUERIES = 60
SPEC_FILE = "zeroshot-spec.json"  # written into a trainer's directory after it succeeded


@dataclass
class GenerativeConfig:
    out: Path
    world: Path | None = None            # world root; generated into OUT/world when None
    small: int | None = None             # miniature world with N test queries
    world_seed: int = 0
    quick: bool = False
    backbone: str = "tiny:world"
    seeds: list[int] = field(default_factory=lambda: [0])
    trainers: list[str] | None = None    # None: every registered trainer
    untrained: list[str] | None = None   # None: UNTRAINED
    options: dict[str, Any] = field(default_factory=dict)
    fail_fast: bool = False
    resume: bool = False
    progress: bool = True
    report: Path | None = None           # also write REPORT.json / REPORT.md


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


# ---- the experiment -------------------------------------------------------------------------------

def _failure(failures: list[dict[str, Any]], what: str, name: str, seed: int | None, err: BaseException) -> None:
    tb = traceback.format_exception(type(err), err, err.__traceback__)
    entry = {"stage": what, "name": name, "seed": seed, "error": f"{type(err).__name__}: {err}",
             "traceback": "".join(tb[-6:])}
    failures.append(entry)
    print(f"cirlab experiment generative: FAILED {what} {name!r}" + (f" (seed {seed})" if seed is not None else "")
          + f": {entry['error']}", file=sys.stderr)


def train_identity(split: Path) -> str | None:
    """A digest of what the zero-shot trainers read from a train split: its gallery and images, by the
    sha256 that ``dataset.json`` records (never its triplets, so worlds that differ only in their query
    texts share it); None when the split records no file digests."""
    try:
        files = json.loads((split / "dataset.json").read_text()).get("files")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(files, dict) or not files:
        return None
    read = {k: v.get("sha256") for k, v in sorted(files.items()) if k != "triplets.jsonl" and isinstance(v, dict)}
    return hashlib.sha256(json.dumps(read, sort_keys=True).encode()).hexdigest()


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


def run_generative(cfg: GenerativeConfig, command: str = "") -> dict[str, Any]:
    """Train, evaluate and write ``results.json`` / ``results.md`` into ``cfg.out``; returns the payload
    (its ``failures`` list is empty on success)."""
    import torch

    from ..backbones import create_backbone
    from ..data import load_dataset
    from ..eval.evaluate import evaluate_methods
    from ..methods import create_method
    from ..methods.base import oracle_parts
    from ..train.zeroshot import ZEROSHOT_TRAINERS, ZeroShotContext

    t_start = time.time()
    options = cfg.options
    import_failures = discover_trainers()
    for f in import_failures:
        print(f"cirlab experiment generative: WARNING module failed to import (its trainers are missing): {f}",
              file=sys.stderr)
    requested = cfg.trainers if cfg.trainers is not None else ZEROSHOT_TRAINERS.names()
    trainers, added = order_trainers(requested, ZEROSHOT_TRAINERS)
    untrained = list(UNTRAINED) if cfg.untrained is None else list(cfg.untrained)
    if cfg.quick and cfg.untrained is None:
        untrained = [("searle-oti:5" if s.startswith("searle-oti") else s) for s in untrained]
    world = ensure_world(cfg.world or cfg.out / "world", cfg.world_seed,
                         cfg.small or (QUICK_QUERIES if cfg.quick else None), progress=cfg.progress,
                         given=cfg.world is not None)
    backbone = create_backbone(cfg.backbone)
    test = load_dataset(world / "test")
    failures: list[dict[str, Any]] = [{"stage": "import", "name": f.split(":")[0], "seed": None, "error": f,
                                       "traceback": ""} for f in import_failures]
    progress = cfg.progress

    train_id = train_identity(world / "train")
    runs: list[tuple[str, str, int | None]] = []  # (display name, spec, seed or None for untrained)
    training: dict[str, dict[str, Any]] = {}
    for seed in cfg.seeds:
        trained: dict[str, str] = {}
        for name in trainers:
            out = cfg.out / f"seed-{seed}" / name
            out.mkdir(parents=True, exist_ok=True)
            ctx = ZeroShotContext(backbone, world, out, seed=seed, quick=cfg.quick, progress=progress,
                                  trained=dict(trained), options=options)
            t0 = time.time()
            budget = {"quick": cfg.quick, "options": options.get(name), "seed": seed, "backbone": backbone.spec,
                      "train": train_id}
            record = _previous(out, budget) if cfg.resume else None
            print(f"== {'reuse' if record else 'train'} {name} (seed {seed})", file=sys.stderr)
            try:
                torch.manual_seed(seed)
                spec = record["spec"] if record else ZEROSHOT_TRAINERS.get(name)(ctx)
                if not isinstance(spec, str) or not spec:
                    raise CirlabError(f"trainer {name!r} returned {spec!r}, not a method spec string")
                create_method(spec, backbone)  # a bad checkpoint fails here, not in the middle of evaluation
            except Exception as e:  # noqa: BLE001 - any trainer error is reported, the others go on
                _failure(failures, "train", name, seed, e)
                if cfg.fail_fast:
                    break
                continue
            seconds = record["seconds"] if record else round(time.time() - t0, 1)
            if not record:
                atomic_write_text(out / SPEC_FILE, json.dumps({"trainer": name, "spec": spec, "seconds": seconds,
                                                           **budget}))
            trained[name] = spec
            training[f"{name}/seed-{seed}"] = {"spec": spec, "seconds": seconds, "reused": bool(record)}
            runs.append((name, spec, seed))
        if cfg.fail_fast and failures:
            break
    runs += [(spec, spec, None) for spec in untrained]

    results: dict[str, dict[str, Any]] = {}  # display name -> {"spec", "per_seed": {seed: {...}}}
    rank_dir = cfg.out / "rankings"
    for name, spec, seed in ([] if cfg.fail_fast and failures else runs):
        try:
            (res,) = evaluate_methods(test, backbone, [spec], cfg.out / "index", progress=progress)
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
        atomic_write_text(rpath, json.dumps(res.rankings))
        entry = results.setdefault(name, {"trained": seed is not None, "specs": {}, "per_seed": {},
                                          "oracle": oracle_parts(res.config)})
        key = str(seed if seed is not None else "-")
        entry["specs"][key] = spec
        entry["per_seed"][key] = {"evaluate": {"metrics": res.metrics, "per_kind": res.per_kind},
                                  "groups": groups, "rankings": str(rpath), "seconds": round(res.seconds, 1)}
    for entry in results.values():
        entry["aggregate"] = aggregate({k: v["groups"] for k, v in entry["per_seed"].items()})

    payload = {"command": command, "backbone": backbone.spec, "world": str(world),
               "train_split": str(world / "train"), "test_split": str(world / "test"),
               "queries": len([t for t in test.triplets if t.targets]), "gallery": len(test.gallery),
               "seeds": list(cfg.seeds), "quick": cfg.quick, "trainers": trainers, "added_for_requires": added,
               "registered_trainers": ZEROSHOT_TRAINERS.names(), "untrained": untrained, "options": options,
               "groups": {g: [k for k, v in GROUP_OF_KIND.items() if v == g] for g in GROUPS[1:]},
               "training": training, "results": results, "failures": failures,
               "seconds": round(time.time() - t_start, 1)}
    write_results(payload, markdown(payload), cfg.out, cfg.report)
    return payload


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
                label = f"{name} (oracle)" if r.get("oracle") else name
                out.append(_row([label, str(a[METRICS[0]]["n"]), *(_cell(a[m]) for m in METRICS)]))
        out.append("")
    ranked = sorted((n for n, r in res.items() if not r.get("oracle") and "all" in r["aggregate"]),
                    key=lambda n: -res[n]["aggregate"]["all"]["recall@10"]["mean"])
    out += ["Ranking by overall recall@10 (oracles excluded): " + " > ".join(ranked), ""]
    oracles = {n: r["oracle"] for n, r in res.items() if r.get("oracle")}
    if oracles:
        out += ["**Oracles** (upper bounds, not methods: they read the answer from the world's generator):", ""]
        out += [f"- `{n}`: " + "; ".join(why) for n, why in oracles.items()]
        out.append("")
    if payload["failures"]:
        out += ["**Failures** (not in the tables above):", ""]
        out += [f"- {f['stage']} `{f['name']}`" + (f" seed {f['seed']}" if f["seed"] is not None else "")
                + f": {f['error']}" for f in payload["failures"]]
        out.append("")
    return "\n".join(out)


__all__ = ["FIRST", "GROUPS", "GROUP_OF_KIND", "GenerativeConfig", "METRICS", "QUICK_QUERIES", "SPEC_FILE",
           "UNTRAINED", "aggregate", "discover_trainers", "group_metrics", "markdown", "order_trainers",
           "run_generative"]
