"""Export a cirlab dataset and an evaluation run to two FiftyOne datasets.

- ``<name>-gallery``: one sample per gallery image: ``image_id``, ``caption``, ``meta`` and, per
  backbone of the run, its embedding (``emb_<backbone>``); optionally a ``cirlab`` similarity index per
  method (brain key ``cir_<method>``) for composed search in the App.
- ``<name>-queries``: one sample per query, the reference image as media: ``query_id``,
  ``reference_id``, ``text``, ``targets``, ``kind`` (and ``heldout`` when the dataset has it), and per
  method an embedded document ``m_<method>`` with ``ranking`` (gallery ids, best first, as cirlab
  scored them), ``rank`` (1-based position of the first target, None when beyond the saved depth),
  ``recall_at_K`` (0 or 1) and ``ap_at_K`` (AP@K, the CIRCO normaliser).

Saved views: on the queries, ``failures-<method>`` (no target in the top ``fail_k``); on the gallery,
``ranked-<method>-<query id>`` (the ranking of that query, in order) for the first ``examples`` queries;
``ranked_view`` makes the same view for any query.

Re-exporting the same run replaces the datasets it made before (built under a temporary name, then
swapped, so an interrupted export leaves the previous one); a dataset of that name that cirlab did not
make is never touched.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ...errors import CirlabError
from ...eval.metrics import MAP_KS, RECALL_KS, average_precision_at_k
from ...eval.results import Run, read_run

MARK = "cirlab_run"  # dataset.info key naming the run a dataset was exported from


def slug(text: str) -> str:
    """A FiftyOne-safe field / view name piece: ``weighted:0.2`` -> ``weighted_0_2``."""
    s = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()
    return s or "x"


def method_field(method: str) -> str:
    return f"m_{slug(method)}"


def embedding_field(backbone: str) -> str:
    return f"emb_{slug(backbone)}"


def brain_key(method: str) -> str:
    return f"cir_{slug(method)}"


def run_name(results: Path) -> str:
    """One dataset name per run: the run directory's name plus a hash of the results file's path."""
    p = Path(results).resolve()
    if p.is_dir():
        p = p / "results.json"
    h = hashlib.sha256(str(p).encode()).hexdigest()[:6]
    return f"cirlab-{slug(p.parent.name)}-{h}".replace("_", "-")


def query_metrics(ranking: Sequence[str], targets: Sequence[str], depth: int) -> dict[str, Any]:
    """Per-query values: first-target rank, recall@K (0/1) and AP@K, as cirlab's metrics define them."""
    gt = set(targets)
    rank = next((n for n, r in enumerate(ranking, 1) if r in gt), None)
    out: dict[str, Any] = {"rank": rank}
    for k in RECALL_KS:
        out[f"recall_at_{k}"] = float(rank is not None and rank <= k)
    for k in MAP_KS:
        out[f"ap_at_{k}"] = average_precision_at_k(ranking, gt, k)
    return out


@dataclass
class Exported:
    name: str
    gallery: Any  # fiftyone.core.dataset.Dataset
    queries: Any

    @property
    def names(self) -> tuple[str, str]:
        return self.gallery.name, self.queries.name


def _check_ours(name: str, run_path: str) -> None:
    import fiftyone as fo

    if fo.dataset_exists(name):
        info = fo.load_dataset(name).info or {}
        if info.get(MARK) != run_path:
            raise CirlabError(f"FiftyOne dataset {name!r} exists and was not exported from {run_path} "
                              f"(its {MARK}: {info.get(MARK)!r}); pick another --name")


def _swap_in(tmp: Any, name: str) -> Any:
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.load_dataset(name).delete()
    tmp.name = name
    tmp.persistent = True
    return tmp


def _fresh(name: str) -> Any:
    import fiftyone as fo

    if fo.dataset_exists(name):  # a leftover of an interrupted export of this run
        fo.load_dataset(name).delete()
    return fo.Dataset(name)


def gallery_embeddings(run: Run, dataset: Any, home: Path | None, progress: bool) -> dict[str, Any]:
    """Per backbone of the run, the (N, D) gallery features (the run's own index when it is there)."""
    from ...backbones import create_backbone
    from ...index import build_index
    from .env import fiftyone_home

    out = {}
    for spec in run.backbones():
        backbone = create_backbone(spec)
        index_dir = run.index_dir
        if index_dir is None or len(run.backbones()) > 1:
            h = hashlib.sha256(("|".join(map(str, dataset.gallery.paths)) + spec).encode()).hexdigest()[:12]
            index_dir = (home or fiftyone_home()) / "indexes" / f"{slug(spec)}-{h}"
        index = build_index(backbone, dataset.gallery, index_dir, progress=progress)
        out[spec] = (index.vectors(dataset.gallery.ids).numpy(), index_dir)
    return out


def export_run(results: str | Path, data: str | Path | None = None, *, name: str | None = None, fail_k: int = 10,
               examples: int = 5, similarity: bool = True, home: Path | None = None, progress: bool = True
               ) -> Exported:
    """Export ``data`` (default: the dataset the run names) and the run at ``results`` to FiftyOne.

    The database must be reachable (``cirlab.integrations.fiftyone.env.database``).
    """
    import fiftyone as fo

    from ...data import load_dataset

    run = read_run(results)
    data_dir = Path(data) if data else (Path(run.dataset) if run.dataset else None)
    if data_dir is None or not data_dir.exists():
        raise CirlabError(f"{run.path}: dataset {str(data_dir)!r} not found; give --data DIR")
    if fail_k not in RECALL_KS:
        raise CirlabError(f"--fail-k must be one of {', '.join(map(str, RECALL_KS))}, got {fail_k}")
    dataset = load_dataset(data_dir)
    run_path = str(run.path.resolve())
    name = name or run_name(run.path)
    gname, qname = f"{name}-gallery", f"{name}-queries"
    for n in (gname, qname):
        _check_ours(n, run_path)
    trips = [t for t in dataset.triplets if t.targets]
    for method in run.methods:
        missing = [t.id for t in trips if t.id not in run.rankings[method]]
        if missing:
            raise CirlabError(f"{run.path}: method {method!r} has no ranking for query {missing[0]!r} of {data_dir} "
                              f"({len(missing)} missing): is --data the dataset this run evaluated?")
    info = {MARK: run_path, "dataset": str(Path(data_dir).resolve()), "results": run.results}

    # gallery
    embs = gallery_embeddings(run, dataset, home, progress)
    g = _fresh(gname + ".export-tmp")
    samples = []
    for n, (image_id, path, caption, meta) in enumerate(zip(dataset.gallery.ids, dataset.gallery.paths,
                                                            dataset.gallery.captions, dataset.gallery.meta)):
        s = fo.Sample(filepath=str(Path(path).resolve()), image_id=image_id, caption=caption, meta=meta or None)
        for spec, (vectors, _) in embs.items():
            s[embedding_field(spec)] = vectors[n]
        samples.append(s)
    g.add_samples(samples, progress=progress)
    g.info = {**info, "embeddings": {spec: embedding_field(spec) for spec in embs}}
    g.save()

    # queries
    q = _fresh(qname + ".export-tmp")
    samples = []
    for t in trips:
        s = fo.Sample(filepath=str(Path(dataset.gallery.path(t.reference)).resolve()), query_id=t.id,
                      reference_id=t.reference, text=t.caption, targets=list(t.targets),
                      kind=str(t.meta.get("kind", "all")), meta=t.meta or None)
        if "heldout" in t.meta:
            s["heldout"] = bool(t.meta["heldout"])
        for method in run.methods:
            ranking = list(run.rankings[method][t.id])
            s[method_field(method)] = fo.DynamicEmbeddedDocument(ranking=ranking, **query_metrics(
                ranking, t.targets, len(ranking)))
        samples.append(s)
    q.add_samples(samples, progress=progress)
    q.info = {**info, "methods": {m: method_field(m) for m in run.methods}, "fail_k": fail_k}
    q.save()

    # swap the finished datasets in, then add the views (saved views belong to a dataset's final name)
    g = _swap_in(g, gname)
    q = _swap_in(q, qname)
    from fiftyone import ViewField as F

    for method in run.methods:
        q.save_view(f"failures-{slug(method)}", q.match(F(f"{method_field(method)}.recall_at_{fail_k}") == 0),
                    description=f"queries whose top {fail_k} for {method} holds no target", overwrite=True)
    for t in trips[:examples]:
        for method in run.methods:
            g.save_view(f"ranked-{slug(method)}-{slug(t.id)}", ranked_view(g, q, t.id, method),
                        description=f"{method}: the ranking of query {t.id} ({t.caption})", overwrite=True)
    if similarity:
        from .similarity import compute_similarity

        for method in run.methods:
            spec = next(r["backbone"] for r in run.results if r["method"] == method)
            compute_similarity(g, backbone=spec, method=method, brain_key=brain_key(method),
                               index_dir=embs[spec][1], progress=progress)
    return Exported(name, g, q)


def ranked_view(gallery: Any, queries: Any, query_id: str, method: str, k: int | None = None) -> Any:
    """The gallery samples of one query's ranking under ``method``, in rank order (top ``k``)."""
    from fiftyone import ViewField as F

    field = method_field(method)
    match = queries.match(F("query_id") == query_id)
    if len(match) != 1:
        raise CirlabError(f"query {query_id!r} is not in {queries.name}")
    ranking = match.first()[field]["ranking"]
    ranking = ranking[:k] if k else ranking
    ids = dict(zip(*gallery.select_fields("image_id").values(["image_id", "id"])))
    return gallery.select([ids[i] for i in ranking if i in ids], ordered=True)
