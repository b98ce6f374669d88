"""Distributed gallery encoding with Ray Data: an actor pool fills the index builder's feature chunks.

``encode_chunks_ray(backbone, gallery, index_dir)`` looks at which feature chunks of the resumable
build (``index_dir/chunks/chunk-NNNNN.safetensors``, see ``cirlab.index.build``) are still missing,
turns their rows (position, image path) into a Ray dataset, and encodes them with ``map_batches``
on a pool of actors. Each actor builds the backbone once from its spec (``create_backbone(spec)``,
on a GPU when the actor was given one) and checks that its weights' fingerprint equals the driver's,
so every node provably encodes with the same model. The driver collects the features and writes each
chunk atomically as soon as all its rows are in; ``build_index`` then reads the chunks exactly as it
reads its own, so a Ray run can be interrupted and resumed (by Ray or by the single-process path).

Ray is always started through ``cirlab.netsafe.ray_init_kwargs`` (loopback, no dashboard, no usage
stats). Give ``address`` (``"auto"`` on a cluster node, ``"ray://head:10001"`` for Ray Client) to use a
running cluster; the image paths must then be readable from every worker (shared file system).
If Ray is already initialised (e.g. by a test session or a notebook) that instance is used as is.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..backbones import Backbone, create_backbone
from ..data.record import Gallery
from ..errors import CirlabError
from ..logs import ray_logging_level, verbose
from ..netsafe import ray_init_kwargs
from .build import chunk_bounds, chunk_path, missing_chunks, prepare_chunks, write_chunk

log = logging.getLogger(__name__)


class ChunkEncoder:
    """The Ray Data actor: loads the backbone once, then encodes batches of image paths."""

    def __init__(self, spec: str, fingerprint: str, batch_size: int, threads: int = 1,
                 loader: Callable[[], Backbone] | None = None) -> None:
        torch.set_num_threads(max(1, threads))
        self.model = loader() if loader is not None else create_backbone(spec)
        if torch.cuda.is_available():
            self.model.to("cuda")
        got = self.model.fingerprint()
        if got != fingerprint:
            raise CirlabError(f"Ray actor on pid {os.getpid()}: backbone {spec!r} has weights fingerprint {got}, "
                              f"the driver's is {fingerprint}; the spec must name the same weights on every node "
                              f"(a shipped name or a checkpoint directory visible to all workers)")
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feats = self.model.encode_images([str(p) for p in batch["path"]], batch_size=self.batch_size, normalize=False)
        return {"pos": np.asarray(batch["pos"], dtype=np.int64), "features": feats.numpy().astype(np.float32)}


def _ensure_ray(address: str | None) -> bool:
    """Initialise Ray (loopback-safe) unless it already runs; returns whether we started it."""
    import ray

    if ray.is_initialized():
        return False
    kw = ray_init_kwargs(address=address) if address else ray_init_kwargs()
    kw.setdefault("logging_level", ray_logging_level())
    ray.init(**kw)  # local Ray: _node_ip_address="127.0.0.1", no dashboard, no usage stats (cirlab.netsafe)
    return True


def check_pool_fits(resources: dict[str, float], num_actors: int, cpus_per_actor: float,
                    gpus_per_actor: float | None) -> None:
    """Refuse an actor pool the cluster cannot hold: Ray would otherwise wait for it forever."""
    for kind, per in (("GPU", gpus_per_actor or 0.0), ("CPU", cpus_per_actor)):
        need, have = num_actors * per, float(resources.get(kind, 0.0))
        if need > have + 1e-9:
            hint = ("pass gpus_per_actor=0 to encode on CPUs, or fewer actors" if kind == "GPU"
                    else "use fewer actors (--ray-actors) or a smaller cpus_per_actor")
            raise CirlabError(f"Ray: {num_actors} actor(s) x {per:g} {kind} each need {need:g} {kind}(s), but the "
                              f"cluster has {have:g} ({', '.join(f'{k} {v:g}' for k, v in sorted(resources.items()) if k in ('CPU', 'GPU')) or 'no CPU/GPU'}); {hint}")


def encode_chunks_ray(backbone: Backbone, gallery: Gallery, work_dir: str | os.PathLike[str], chunk_size: int = 2048,
                      batch_size: int = 64, address: str | None = None, num_actors: int | None = None,
                      cpus_per_actor: float = 1.0, gpus_per_actor: float | None = None,
                      loader: Callable[[], Backbone] | None = None, progress: bool = True) -> int:
    """Encode the gallery's missing feature chunks under ``work_dir`` with a Ray actor pool.

    Returns the number of images encoded. ``num_actors`` defaults to the cluster's CPUs (or GPUs when
    ``gpus_per_actor`` is set or GPUs exist) divided by the per-actor share. ``loader`` replaces
    ``create_backbone(backbone.spec)`` inside the actors (it is shipped to them by Ray).
    """
    import ray
    import ray.data

    cdir = prepare_chunks(backbone, gallery, Path(work_dir), chunk_size)
    bounds = chunk_bounds(len(gallery), chunk_size)
    todo = missing_chunks(cdir, len(gallery), chunk_size)
    if not todo:
        return 0
    rows = [{"pos": p, "path": str(gallery.paths[p])} for c in todo for p in range(*bounds[c])]
    started = _ensure_ray(address)
    try:
        resources = ray.cluster_resources()
        if gpus_per_actor is None:
            gpus_per_actor = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        if num_actors is None:
            by_cpu = int(resources.get("CPU", 1) // max(cpus_per_actor, 1e-9))
            by_gpu = int(resources.get("GPU", 0) // gpus_per_actor) if gpus_per_actor else by_cpu
            num_actors = max(1, min(by_cpu, by_gpu, len(rows) // max(batch_size, 1) or 1))
        check_pool_fits(resources, num_actors, cpus_per_actor, gpus_per_actor)
        ray.data.DataContext.get_current().enable_progress_bars = verbose()   # cirlab's own bar below
        log.info("ray: encoding %d images in %d chunks with %d actor(s)", len(rows), len(todo), num_actors)
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // max(batch_size, 1), 4 * num_actors)))
        out = ds.map_batches(ChunkEncoder, batch_size=batch_size, batch_format="numpy",
                             fn_constructor_kwargs={"spec": backbone.spec, "fingerprint": backbone.fingerprint(),
                                                    "batch_size": batch_size, "threads": int(max(1, cpus_per_actor)),
                                                    "loader": loader},
                             compute=ray.data.ActorPoolStrategy(size=num_actors),
                             num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None)
        pending = {c: torch.empty(bounds[c][1] - bounds[c][0], backbone.embed_dim) for c in todo}
        left = {c: bounds[c][1] - bounds[c][0] for c in todo}
        bar = tqdm(total=len(rows), desc="encode gallery (ray)", unit="img", disable=not progress)
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            feats = torch.from_numpy(np.ascontiguousarray(batch["features"], dtype=np.float32))
            for p, f in zip(batch["pos"].tolist(), feats):
                c = p // chunk_size
                pending[c][p - bounds[c][0]] = f
                left[c] -= 1
                if left[c] == 0:
                    write_chunk(chunk_path(cdir, c), pending.pop(c))
            bar.update(len(feats))
        bar.close()
        if pending:
            raise CirlabError(f"ray encoding returned no features for chunk(s) {sorted(pending)[:5]}")
        return len(rows)
    finally:
        if started:
            ray.shutdown()
