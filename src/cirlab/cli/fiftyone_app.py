"""``cirlab export fiftyone`` and ``cirlab fiftyone``: an evaluation run in the FiftyOne App (extra ``fiftyone``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CirlabError

DEFAULT_PORT = 5151


def _export_args(p: argparse.ArgumentParser, results_required: bool) -> None:
    p.add_argument("--results", type=Path, required=results_required, default=None if results_required else
                   Path("demo-out"), help="the run: a results JSON written by `cirlab eval --out` or `cirlab demo`, "
                   "or the directory holding results.json" + ("" if results_required else " (default: demo-out)"))
    p.add_argument("--data", type=Path, default=None, help="the dataset the run evaluated (default: the one the "
                   "results name)")
    p.add_argument("--name", default=None, help="FiftyOne dataset name prefix (default: one per run, from its path)")
    p.add_argument("--fail-k", type=int, default=10, help="a query fails when no target is in its top K (default: 10)")
    p.add_argument("--examples", type=int, default=5, help="queries that get a saved ranked view (default: 5)")
    p.add_argument("--no-similarity", action="store_true", help="skip the composed-search index per method")
    p.add_argument("--home", type=Path, default=None, help="FiftyOne state directory (default: $CIRLAB_FIFTYONE_HOME "
                   "or ~/.cache/cirlab/fiftyone)")


def register(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="export an evaluation run to another tool (fiftyone)")
    targets = ex.add_subparsers(dest="target", metavar="TARGET")
    targets.required = True
    fo = targets.add_parser("fiftyone", help="gallery + query datasets with rankings, per-query metrics, failure views")
    _export_args(fo, results_required=True)
    fo.set_defaults(func=run_export)

    app = sub.add_parser("fiftyone", help="export a run to FiftyOne (again, idempotently) and open it in the App "
                         "on 127.0.0.1")
    _export_args(app, results_required=False)
    app.add_argument("--launch", action="store_true", help="serve the App until interrupted")
    app.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"App port on 127.0.0.1 (default: {DEFAULT_PORT})")
    app.add_argument("--no-export", action="store_true", help="open what an earlier export made")
    app.set_defaults(func=run_app)


def _require_fiftyone() -> None:
    import importlib.util

    if importlib.util.find_spec("fiftyone") is None:
        raise CirlabError("FiftyOne is not installed in this environment: `make install-fiftyone` makes "
                          ".venv-fiftyone (run .venv-fiftyone/bin/cirlab), see docs/fiftyone.md")


def _export(args: argparse.Namespace):
    from ..integrations.fiftyone import export

    return export.export_run(args.results, args.data, name=args.name, fail_k=args.fail_k, examples=args.examples,
                             similarity=not args.no_similarity, home=args.home)


def run_export(args: argparse.Namespace) -> int:
    _require_fiftyone()
    from ..integrations.fiftyone import database

    with database(args.home):
        done = _export(args)
        for ds in (done.gallery, done.queries):
            print(f"{ds.name}: {len(ds)} samples; saved views: {', '.join(ds.list_saved_views()) or '-'}")
    return 0


def run_app(args: argparse.Namespace) -> int:
    import signal

    _require_fiftyone()
    from ..integrations.fiftyone import database
    from ..integrations.fiftyone.app import start_app
    from ..integrations.fiftyone.env import configure
    from ..integrations.fiftyone.export import run_name

    home = configure(args.home)

    def stop(signum, frame):  # noqa: ARG001 - SIGTERM ends the App like Ctrl-C: children stopped by pid
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with database(home):
        if args.no_export:
            import fiftyone as fo

            name = args.name or run_name(args.results)
            if not fo.dataset_exists(f"{name}-queries"):
                raise CirlabError(f"no FiftyOne dataset {name}-queries: run without --no-export first")
        else:
            done = _export(args)
            name = done.name
            for ds in (done.gallery, done.queries):
                print(f"{ds.name}: {len(ds)} samples; saved views: {', '.join(ds.list_saved_views()) or '-'}")
        if not args.launch:
            print(f"open it with: cirlab fiftyone --results {args.results} --no-export --launch")
            return 0
        server = start_app(home, args.port)
        try:
            print(f"FiftyOne App: {server.dataset_url(name + '-queries')}  (gallery: "
                  f"{server.dataset_url(name + '-gallery')}); Ctrl-C stops it", flush=True)
            server.proc.wait()
        finally:
            server.stop()
    return 0
