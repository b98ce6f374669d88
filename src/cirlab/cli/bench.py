"""Standard benchmarks on the command line: ``data check``, ``eval-predictions``, ``submit``,
``validate-submission`` (``cirlab eval --benchmark`` lives in ``evaluate.py``)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH_HELP = "cirr, fashioniq or circo"


def _common(p: argparse.ArgumentParser, servers_only: bool = False) -> None:
    p.add_argument("--benchmark", required=True, help="cirr or circo" if servers_only else BENCH_HELP)
    p.add_argument("--split", required=True, help="split name (cirr: val, test1; fashioniq: val, test; circo: val, test)")
    p.add_argument("--data-root", type=Path, default=None, help="benchmark root (or $CIRLAB_<BENCHMARK>_ROOT)")


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="inspect benchmark data on disk")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    c = dsub.add_parser("check", help="report missing gallery/query images and whether evaluation can proceed")
    _common(c)
    c.add_argument("--list", type=int, default=20, help="list at most this many missing ids per kind (-1: all)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=run_check)

    e = sub.add_parser("eval-predictions", help="score a predictions file (server format) without a model")
    _common(e)
    e.add_argument("--predictions", required=True, type=Path, help="CIRR recall / CIRCO / Fashion IQ predictions")
    e.add_argument("--subset-predictions", type=Path, default=None, help="CIRR recall_subset predictions")
    e.add_argument("--json", action="store_true", help="print one JSON object of metrics")
    e.set_defaults(func=run_eval_predictions)

    s = sub.add_parser("submit", help="rank a test split with a model and write the test server's files")
    _common(s, servers_only=True)
    s.add_argument("--backbone", default="tiny:world", help="backbone spec")
    s.add_argument("--method", default="sum", help="method spec")
    s.add_argument("--out", required=True, type=Path, help="directory for the submission file(s)")
    s.add_argument("--index-dir", type=Path, default=None, help="where the gallery index is cached")
    s.add_argument("--template", default=None, help="prompt template with {caption} (recorded in run-config.json)")
    s.set_defaults(func=run_submit)

    v = sub.add_parser("validate-submission", help="run the test servers' sanity checks on submission file(s)")
    _common(v, servers_only=True)
    v.add_argument("files", nargs="+", type=Path, help="submission file(s) (CIRR: recall and/or recall_subset)")
    v.add_argument("--max-bytes", type=int, default=None,
                   help="file size cap (default: the server's, 5 MB for CIRR; 32 MiB for CIRCO)")
    v.set_defaults(func=run_validate)


def _load(args: argparse.Namespace, need_gallery: bool):
    from ..benchmarks import get_benchmark

    return get_benchmark(args.benchmark).load(args.data_root, args.split, need_gallery=need_gallery)


def run_check(args: argparse.Namespace) -> int:
    from ..benchmarks.check import check_split

    report = check_split(_load(args, need_gallery=True))
    limit = None if args.list < 0 else args.list
    if args.json:
        print(json.dumps(report.to_json(limit), indent=1))
    else:
        print(f"{report.benchmark} {report.split} under {report.root}")
        for name, r in report.parts.items():
            print(f"  {name}: gallery {r.gallery} images, {len(r.missing_gallery)} missing; {r.queries} queries, "
                  f"{len(r.missing_reference)} with a missing reference image, {len(r.incomplete)} incomplete")
            for label, ids in (("missing gallery images", r.missing_gallery),
                               ("queries missing their reference image", r.missing_reference)):
                if ids:
                    shown = ids if limit is None else ids[:limit]
                    more = f" ... and {len(ids) - len(shown)} more" if len(ids) > len(shown) else ""
                    print(f"    {label}: {', '.join(shown)}{more}")
        print(f"can evaluate: {report.verdict()}")
    return 0 if report.complete else 1


def run_eval_predictions(args: argparse.Namespace) -> int:
    from ..benchmarks.offline import score_prediction_files

    split = _load(args, need_gallery=False)
    metrics, problems = score_prediction_files(split, args.predictions, args.subset_predictions)
    for w in problems.warnings:
        print(f"cirlab: warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(metrics))
    else:
        width = max(map(len, metrics), default=0)
        for k, v in metrics.items():
            print(f"{k.ljust(width)}  {v:.2f}")
    return 0


def _server_benchmark(args: argparse.Namespace):
    from ..benchmarks import get_benchmark
    from ..errors import CirlabError

    bench = get_benchmark(args.benchmark)
    if not bench.server_splits:
        raise CirlabError(f"{bench.name} has no test server; score val predictions with `cirlab eval-predictions`")
    return bench


def run_validate(args: argparse.Namespace) -> int:
    from ..benchmarks.submission import CIRR_RECALL, CIRR_SUBSET
    from ..benchmarks.validate import validate_file

    _server_benchmark(args)
    split = _load(args, need_gallery=False)
    failed = 0
    metrics: set[str] = set()
    for f in args.files:
        problems, obj, metric = validate_file(split, f, server=True, max_bytes=args.max_bytes)
        metrics.add(metric or "")
        for w in problems.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if problems.ok:
            n = sum(1 for k in obj if k not in ("version", "metric"))
            kind = f" ({metric})" if metric else ""
            print(f"OK {f}: {split.benchmark} {split.split}{kind}, {n} queries")
        else:
            failed += 1
            for e in problems.errors:
                print(f"error: {e}", file=sys.stderr)
            print(f"REJECTED {f}: {len(problems.errors)} problem(s)", file=sys.stderr)
    absent = [m for m in (CIRR_RECALL, CIRR_SUBSET) if m not in metrics]
    if split.benchmark == "cirr" and absent:
        print(f"note: the CIRR server needs both files (metric {CIRR_RECALL!r} and {CIRR_SUBSET!r}); "
              f"{' and '.join(map(repr, absent))} not given")
    return 1 if failed else 0


def run_submit(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..benchmarks.run import prepare_split, prompt_from, rank_split
    from ..benchmarks.submission import save_predictions, write_json
    from ..benchmarks.validate import validate_file
    from ..errors import CirlabError
    from ..methods import create_method

    bench = _server_benchmark(args)
    if args.split not in bench.server_splits:
        raise CirlabError(f"{bench.name}: the test server scores {', '.join(bench.server_splits)}, not {args.split!r}")
    args.caption_join = None
    split = prepare_split(bench, args.data_root, args.split, drop=False)
    backbone = create_backbone(args.backbone)
    method = create_method(args.method, backbone)
    prompt = prompt_from(args, method, bench.name)
    rankings, subset = rank_split(args, bench, split, backbone, method, prompt)
    paths = save_predictions(args.out, f"{bench.name}-{args.split}", split, rankings, subset)
    write_json(args.out / "run-config.json", {"benchmark": bench.name, "split": args.split, "backbone": backbone.spec,
                                              "method": method.config(), "prompt": prompt.to_json(False),
                                              "files": [str(p) for p in paths]})
    for p in paths:
        problems, _, _ = validate_file(split, p, server=True)
        problems.raise_if_errors(f"{p} failed validation")
        print(f"wrote {p} (validated)")
    return 0
