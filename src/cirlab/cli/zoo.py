"""``cirlab zoo list|fetch`` and ``cirlab reproduce``: the named pretrained configurations of the papers."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .. import zoo  # noqa: F401  (registers zoo entry names as method specs for every command)
from ..errors import CirlabError
from .common import format_table


def register(sub: argparse._SubParsersAction) -> None:
    z = sub.add_parser("zoo", help="named pretrained configurations of the published methods (the model zoo)")
    zsub = z.add_subparsers(dest="zoo_command", metavar="ACTION")
    zsub.required = True
    ls = zsub.add_parser("list", help="every entry with its weights, preprocessing and published numbers")
    ls.add_argument("--json", action="store_true", help="print the entries as JSON")
    ls.set_defaults(func=run_list)
    f = zsub.add_parser("fetch", help="download an entry's weight files into the zoo cache ($CIRLAB_ZOO_DIR; "
                                      "checksum, resumes an interrupted download)")
    f.add_argument("name", help="zoo entry, e.g. searle:vit-l14")
    f.add_argument("--no-import", action="store_true", help="only download; do not convert into cirlab's format")
    f.set_defaults(func=run_fetch)

    r = sub.add_parser("reproduce", help="run a zoo entry on a benchmark as its paper did; print published vs "
                                         "measured (and write the test server's files for test splits)")
    r.add_argument("name", help="zoo entry, e.g. searle:vit-l14 (see `cirlab zoo list`)")
    r.add_argument("--benchmark", required=True, help="cirr, fashioniq or circo")
    r.add_argument("--split", default="val", help="val (scored here) or the test split (cirr: test1, circo: test; "
                                                  "written for the test server)")
    r.add_argument("--data-root", type=Path, default=None, help="benchmark root (or $CIRLAB_<BENCHMARK>_ROOT)")
    r.add_argument("--out", type=Path, default=None, help="directory for results.json and prediction files "
                                                          "(required for test splits)")
    r.add_argument("--index-dir", type=Path, default=None, help="where the gallery index is cached")
    r.add_argument("--backbone", default=None, help="use this backbone spec instead of the entry's (e.g. a local "
                                                    "copy of the same model)")
    r.add_argument("--fetch", action="store_true", help="download missing weight files first")
    r.add_argument("--drop-incomplete", action="store_true",
                   help="evaluate only queries whose images are all present (noted loudly)")
    r.add_argument("--json", action="store_true", help="print the comparison as JSON")
    r.set_defaults(func=run_reproduce)


def _numbers(entry: Any) -> str:
    return "; ".join(f"{p.benchmark} {p.split} " + ", ".join(f"{k} {v:g}" for k, v in p.metrics.items())
                     for p in entry.published) or "(not recorded)"


def run_list(args: argparse.Namespace) -> int:
    from ..zoo import entries
    from ..zoo.fetch import file_path

    rows = []
    for e in entries():
        files = [{"name": w.name, "url": w.url, "source": w.source, "sha256": w.sha256, "importer": w.importer,
                  "cached": file_path(w).exists()} for w in e.weights]
        rows.append({"name": e.name, "method": e.method, "backbone": e.backbone, "preprocessing": e.preprocessing,
                     "paper": e.paper, "weights": files, "presets": e.presets,
                     "published": [{"benchmark": p.benchmark, "split": p.split, "metrics": p.metrics,
                                    "source": p.source} for p in e.published], "notes": e.notes})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(format_table([{"entry": r["name"], "backbone": r["backbone"], "preprocessing": r["preprocessing"],
                         "weights": ", ".join(f"{w['name']}{' (cached)' if w['cached'] else ''}"
                                              for w in r["weights"]) or "-"} for r in rows],
                       ["entry", "backbone", "preprocessing", "weights"]))
    print()
    for e in entries():
        print(f"{e.name}: {_numbers(e)}")
        for src in dict.fromkeys(p.source for p in e.published):
            print(f"    source: {src}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from ..zoo import get_entry, materialize
    from ..zoo.fetch import fetch_entry

    entry = get_entry(args.name)
    paths = fetch_entry(entry)
    for key, p in paths.items():
        print(f"{key}: {p}")
    if not args.no_import:
        m = materialize(entry)
        print(f"method spec: {m.method}\nbackbone spec: {m.backbone}")
    return 0


def comparison(published: list[Any], measured: dict[str, float], headline: list[str]) -> list[dict[str, Any]]:
    """Rows metric | published (split) | measured: every published metric, then the benchmark's headline ones."""
    names = list(dict.fromkeys([k for p in published for k in p.metrics] + [h for h in headline if h in measured]))
    rows = []
    for k in names:
        pub = next((f"{p.metrics[k]:g} ({p.split})" for p in published if k in p.metrics), "-")
        rows.append({"metric": k, "published": pub,
                     "measured": f"{measured[k]:.2f}" if k in measured else "-"})
    return rows


def run_reproduce(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..benchmarks import get_benchmark
    from ..benchmarks.run import prepare_split, rank_split
    from ..benchmarks.submission import save_predictions, write_json
    from ..benchmarks.templates import PromptConfig
    from ..benchmarks.validate import validate_file
    from ..methods import create_method
    from ..zoo import get_entry, materialize

    entry = get_entry(args.name)
    bench = get_benchmark(args.benchmark)
    preset = entry.preset(bench.name)
    labelled = args.split in bench.labelled_splits
    if not labelled and args.out is None:
        raise CirlabError(f"{bench.name} {args.split} has no public ground truth: pass --out DIR for the test "
                          f"server's files")
    prompt = PromptConfig(template=preset.get("template", "{caption}"), join=preset.get("join", "and"))
    m = materialize(entry, bench.name, backbone=args.backbone, fetch=args.fetch)
    split = prepare_split(bench, args.data_root, args.split, args.drop_incomplete)
    backbone = create_backbone(m.backbone)
    method = create_method(m.method, backbone)
    method.spec = entry.name
    rankings, subset = rank_split(args, bench, split, backbone, method, prompt)
    measured = bench.metrics(split, rankings, subset) if labelled else {}
    published = entry.published_for(bench.name)
    files: list[str] = []
    if args.out is not None:
        paths = save_predictions(args.out, f"{bench.name}-{args.split}-{entry.name.replace(':', '-')}", split,
                                 rankings, subset)
        if args.split in bench.server_splits:
            for p in paths:
                problems, _, _ = validate_file(split, p, server=True)
                problems.raise_if_errors(f"{p} failed validation")
        files = [str(p) for p in paths]
    rows = comparison(published, measured, bench.headline)
    payload = {"entry": entry.name, "benchmark": bench.name, "split": args.split, "backbone": m.backbone,
               "method": m.method, "preprocessing": entry.preprocessing, "prompt": prompt.to_json(
                   uses_join=bench.name == "fashioniq"), "published": [p.__dict__ for p in published],
               "measured": measured, "files": files, "notes": split.notes, "config": method.config()}
    if args.out is not None:
        write_json(Path(args.out) / "results.json", payload)
    if args.json:
        print(json.dumps(payload, indent=1, default=str))
        return 0
    print(f"{entry.name} on {bench.name} {args.split}: backbone {m.backbone}, method {m.method}")
    print(format_table(rows, ["metric", "published", "measured"]))
    for src in dict.fromkeys(p.source for p in published):
        print(f"published: {src}")
    if not labelled:
        print(f"measured: no public ground truth for {bench.name} {args.split}; upload to the test server:")
    for f in files:
        print(f"  wrote {f}")
    for n in split.notes:
        print(f"note: {n}")
    return 0
