"""Ranking a benchmark split with a backbone + method: ``cirlab eval --benchmark`` and ``cirlab submit``.

Per part (CIRR/CIRCO: one; Fashion IQ: one per category) the part's gallery is
indexed once with the backbone (``build_index``, reused when cached), each query's
text(s) come from the prompt configuration, and the index ranks the gallery (the
reference removed when the protocol says so). CIRR's ``recall_subset`` ranking is
the set members other than the reference in the order of the *global* ranking:
members in the top-50 keep their order there, the rest follow by their own scores
(their stored vectors dotted with the query), so members ranked below 50 are
ordered correctly too.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import CirlabError
from ..retrieval import Retriever
from . import get_benchmark
from .base import Benchmark, BenchmarkSplit
from .check import check_split, drop_incomplete
from .presets import method_preset
from .protocols import cirr_subset_ranking
from .submission import RANK_DEPTH, save_predictions
from .templates import PromptConfig

Rankings = dict[str, list[str]]


@torch.no_grad()
def rank_part(retriever: Retriever, split: BenchmarkSplit, part: str, prompt: PromptConfig, *,
              exclude_reference: bool, subsets: bool = False, depth: int = RANK_DEPTH, batch_size: int = 128,
              progress: bool = True) -> tuple[Rankings, Rankings | None]:
    """Top-``depth`` rankings of one part's queries, and (``subsets``) CIRR subset rankings."""
    ds = split.parts[part]
    pos = {i: n for n, i in enumerate(ds.gallery.ids)}
    rankings: Rankings = {}
    subset: Rankings | None = {} if subsets else None
    trips = ds.triplets
    for start in tqdm(range(0, len(trips), batch_size), desc=f"rank {split.benchmark} {part}", unit="batch",
                      disable=not progress):
        chunk = trips[start:start + batch_size]
        variants = [prompt.texts(t) for t in chunk]
        refs = [t.reference for t in chunk]
        batches = [retriever.make_batch(refs, [v[j] for v in variants]) for j in range(len(variants[0]))]
        exclude = [[t.reference] for t in chunk] if exclude_reference else None
        # the method's re-scoring runs with its own depth, as in `cirlab eval`
        _, ids, queries = retriever.search_variants(batches, depth, exclude)
        queries = queries.float()
        for n, (t, row) in enumerate(zip(chunk, ids)):
            rankings[t.id] = row
            if subset is not None:
                group = [m for m in t.meta["members"] if m != t.reference]
                scores = (retriever.index.vectors(group) @ queries[n]).tolist()
                subset[t.id] = cirr_subset_ranking(row, t.meta["members"], t.reference, dict(zip(group, scores)), pos)
    return rankings, subset


def prepare_split(bench: Benchmark, root: Path | None, split_name: str, drop: bool) -> BenchmarkSplit:
    """Load the split and make sure its images are there (or drop incomplete queries, loudly)."""
    split = bench.load(root, split_name)
    report = check_split(split)
    if report.complete:
        return split
    if not drop:
        raise CirlabError(f"{bench.name} {split_name} under {split.root}: {report.verdict()}; "
                          f"see `cirlab data check --benchmark {bench.name} --split {split_name} "
                          f"--data-root {split.root}`")
    if report.usable_queries == 0:
        raise CirlabError(f"{bench.name} {split_name} under {split.root}: {report.verdict()}")
    split, note = drop_incomplete(split, report)
    print(f"cirlab: WARNING: {note}", file=sys.stderr)
    return split


def index_dir_for(args: argparse.Namespace, split: BenchmarkSplit, part: str, gallery: Any, spec: str) -> Path:
    from ..paths import default_index_dir

    if args.index_dir:
        return Path(args.index_dir) / f"{split.benchmark}-{split.split}-{part}"
    return default_index_dir(gallery, spec)


def rank_split(args: argparse.Namespace, bench: Benchmark, split: BenchmarkSplit, backbone: Any, method: Any,
               prompt: PromptConfig, progress: bool = True) -> tuple[Rankings, Rankings | None]:
    from ..index import build_index

    rankings: Rankings = {}
    subset: Rankings | None = None
    for part, ds in split.parts.items():
        index = build_index(backbone, ds.gallery, index_dir_for(args, split, part, ds.gallery, backbone.spec),
                            "exact", progress=progress)
        retriever = Retriever(backbone, index, method, dict(zip(ds.gallery.ids, map(str, ds.gallery.paths))))
        r, s = rank_part(retriever, split, part, prompt, exclude_reference=bench.exclude_reference,
                         subsets=bench.name == "cirr", progress=progress)
        rankings.update(r)
        if s is not None:
            subset = {**(subset or {}), **s}
    return rankings, subset


def prompt_from(args: argparse.Namespace, method: Any = None, benchmark: str = "") -> PromptConfig:
    """``--template`` / ``--caption-join`` when given; else the method's inference preset for ``benchmark``
    (a checkpoint that names its family, ``benchmarks.presets``); else the plain caption joined by "and"."""
    template, join = getattr(args, "template", None), getattr(args, "caption_join", None)
    preset = method_preset(method, benchmark) if method is not None and not (template or join) else None
    if preset is not None:
        return preset.prompt()
    return PromptConfig(template=template or "{caption}", join=join or "and")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "method"


def run_eval(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..tables import format_table
    from ..methods import create_method

    bench = get_benchmark(args.benchmark)
    if getattr(args, "keep_reference", False):
        raise CirlabError(f"--keep-reference does not apply to {bench.name}: the protocol fixes whether the "
                          f"reference is removed ({'removed' if bench.exclude_reference else 'kept'})")
    prompt = prompt_from(args)
    split = prepare_split(bench, args.data_root, args.split, getattr(args, "drop_incomplete", False))
    labelled = split.has_ground_truth()
    if not labelled and not args.save_rankings:
        raise CirlabError(f"{bench.name} {args.split} has no public ground truth: pass --save-rankings DIR "
                          f"(or use `cirlab submit`)")
    backbone = create_backbone(args.backbone)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = []
    saved: dict[str, list[str]] = {}
    for m in methods:
        t0 = time.time()
        method = create_method(m, backbone)
        m_prompt = prompt_from(args, method, bench.name)
        rankings, subset = rank_split(args, bench, split, backbone, method, m_prompt)
        metrics = bench.metrics(split, rankings, subset) if labelled else {}
        results.append({"method": m, "backbone": backbone.spec, "metrics": metrics, "config": method.config(),
                        "seconds": round(time.time() - t0, 2)})
        if m_prompt != prompt:
            results[-1]["prompt"] = m_prompt.to_json(uses_join=bench.name == "fashioniq")
        if args.save_rankings:
            paths = save_predictions(Path(args.save_rankings), f"{bench.name}-{args.split}-{slug(m)}", split,
                                     rankings, subset)
            saved[m] = [str(p) for p in paths]
    payload = {
        "benchmark": bench.name, "split": args.split, "data_root": str(split.root),
        "protocol": {"exclude_reference": bench.exclude_reference, "rank_depth": RANK_DEPTH},
        "prompt": prompt.to_json(uses_join=bench.name == "fashioniq"),
        "complete": not any("INCOMPLETE" in n for n in split.notes), "notes": split.notes,
        "queries": {p: len(ds.triplets) for p, ds in split.parts.items()},
        "gallery": {p: len(ds.gallery) for p, ds in split.parts.items()},
        "results": results,
    }
    if saved:
        payload["predictions"] = saved
    if args.out:
        from ..data.jsonl import write_json

        write_json(args.out, payload)
    if args.json:
        print(json.dumps(payload, indent=1))
    elif labelled:
        cols = ["method"] + [c for c in bench.headline if any(c in r["metrics"] for r in results)]
        print(format_table([{"method": r["method"], **r["metrics"]} for r in results], cols))
        for n in split.notes:
            print(f"note: {n}")
    else:
        for m, paths in saved.items():
            print(f"{m}: rankings -> {', '.join(paths)}")
    return 0
