"""Fast, cached image encoding: a DataLoader with workers, device auto-selection, AMP on GPU,
and a per-image feature cache.

``encode_images(backbone, images)`` returns the same (N, D) normalised float32
features as ``backbone.encode_images`` (raw projected ones with ``normalize=False``;
the cache keeps the raw features) but

* decodes and preprocesses in DataLoader worker processes while the model runs, where that pays
  (``default_workers``: on a CPU-only machine with two cores or fewer the model already uses every
  core, so decoding runs in the same process between batches, on one thread per core: Pillow
  releases the GIL while it decodes);
* with ``draft=True``, decodes JPEGs much larger than the model input at a reduced DCT scale
  (``ImageBounds.draft_pixels`` = ``DRAFT_FACTOR`` x the model's input pixels, so the decoded image
  keeps at least twice the input's side): decoding a 12 MP photo for a 224 px model costs a fraction;
  features change slightly (measured in ``benchmarks/encode_throughput.py``) and get their own cache key;
* picks the device (``cuda`` > ``mps`` > ``cpu``) unless told otherwise, and runs
  under autocast (float16/bfloat16) on CUDA;
* looks every image up in a ``FeatureCache`` first. The cache key is the backbone
  spec + a hash of its weights + a hash of its preprocessing (+ the autocast
  dtype) for the model, and a hash of the image's bytes for the image: an
  unchanged gallery costs no model work, a changed image is re-encoded, and
  identical images are encoded once. Features are committed batch by batch, so an
  interrupted run resumes where it stopped.

The cache is one SQLite file shared by every command (``cirlab index``, ``eval``, ``demo`` and
the experiments encode galleries through ``build_index``; the service serves those indexes):
``$CIRLAB_FEATURE_CACHE`` if set (a file path, or ``off`` to disable it), else
``cache_root() / "features.sqlite"`` (``$CIRLAB_CACHE``, else ``$XDG_CACHE_HOME/cirlab``,
else ``~/.cache/cirlab``). It also remembers the content hash of each file by (path, size,
mtime), so an unchanged gallery is not even re-read. Features are stored as raw float32
bytes (no pickle).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sqlite3
import threading
import dataclasses
import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..imaging import DEFAULT_BOUNDS, ImageBounds
from ..paths import cache_root
from .base import Backbone, ImageLike, load_image

HASH_BYTES = 16
#: ``draft=True`` decodes JPEGs at the smallest DCT scale that keeps this many times the model's input pixels
DRAFT_FACTOR = 4
FEATURE_CACHE_ENV = "CIRLAB_FEATURE_CACHE"
_OFF = {"off", "none", "0", "false", "no"}


# ---- where things live -----------------------------------------------------------------------


def default_cache_path() -> Path | None:
    """The shared feature cache file: ``$CIRLAB_FEATURE_CACHE`` (``off`` = no cache), else
    ``cache_root() / "features.sqlite"``."""
    env = os.environ.get(FEATURE_CACHE_ENV, "").strip()
    if env.lower() in _OFF:
        return None
    return Path(env).expanduser() if env else cache_root() / "features.sqlite"


def open_cache(spec: "FeatureCache | str | os.PathLike[str] | bool | None" = True) -> "FeatureCache | None":
    """``True`` -> the default cache (or None when it is turned off); a path -> that file; ``"off"``,
    ``False`` or ``None`` -> no cache; a ``FeatureCache`` is returned as is."""
    if isinstance(spec, FeatureCache):
        return spec
    if spec is True:
        path = default_cache_path()
        return FeatureCache(path) if path else None
    if spec is False or spec is None or str(spec).strip().lower() in _OFF:
        return None
    return FeatureCache(spec)


@dataclass
class EncodeStats:
    """What an encoding call did: images asked for, found in the cache, and run through the model."""

    images: int = 0
    cached: int = 0
    encoded: int = 0

    def add(self, other: "EncodeStats") -> None:
        self.images += other.images
        self.cached += other.cached
        self.encoded += other.encoded

    def __str__(self) -> str:
        return f"encoded {self.encoded} of {self.images} images ({self.cached} reused)"


def pick_device(prefer: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> cuda if available, else mps, else cpu; anything else is taken as given."""
    if prefer not in (None, "auto"):
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """Mixed precision on CUDA only (bfloat16 where supported, else float16)."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# ---- hashes that make up the cache key --------------------------------------------------------
_FINGERPRINTS: "weakref.WeakKeyDictionary[Backbone, tuple[tuple[Any, ...], str]]" = weakref.WeakKeyDictionary()


def weights_fingerprint(backbone: Backbone) -> str:
    """``backbone.fingerprint()``, memoised until a tensor is replaced or changed in place
    (tensor version counters), so per-chunk calls do not re-hash large models."""
    state = (backbone.spec,) + tuple((n, t.data_ptr(), t._version, tuple(t.shape))
                                     for n, t in backbone.state_dict(keep_vars=True).items())
    hit = _FINGERPRINTS.get(backbone)
    if hit is not None and hit[0] == state:
        return hit[1]
    fp = backbone.fingerprint()
    _FINGERPRINTS[backbone] = (state, fp)
    return fp


def _probe_images() -> list[Image.Image]:
    """Two fixed synthetic images (landscape and portrait) whose preprocessed pixels fingerprint a pipeline."""
    y, x = np.mgrid[0:37, 0:53]
    land = np.stack([(x * 5) % 256, (y * 7) % 256, ((x + y) * 3) % 256], -1).astype(np.uint8)
    return [Image.fromarray(land), Image.fromarray(np.ascontiguousarray(land.transpose(1, 0, 2)[:, ::-1]))]


def preprocess_fingerprint(backbone: Backbone) -> str:
    """Hash of the preprocessing: the backbone's ``preprocess_config()`` if it has one, and the exact
    tensors its ``preprocess`` makes of two probe images (so any change of resize, crop or normalisation shows)."""
    h = hashlib.sha256(type(backbone).__qualname__.encode())
    cfg = getattr(backbone, "preprocess_config", None)
    if callable(cfg):
        h.update(json.dumps(cfg(), sort_keys=True, default=str).encode())
    for im in _probe_images():
        t = backbone.preprocess(im).detach().float().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def image_bytes_hash(item: ImageLike) -> bytes:
    """Hash of an image's content: the file's bytes for a path, mode + size + pixels for a PIL image."""
    h = hashlib.blake2b(digest_size=HASH_BYTES)
    if isinstance(item, Image.Image):
        h.update(f"{item.mode}:{item.size}".encode())
        h.update(item.tobytes())
        return h.digest()
    with open(item, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


# ---- the cache --------------------------------------------------------------------------------
class FeatureCache:
    """Image features in one SQLite file, keyed by (model key, image content hash)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else (default_cache_path() or cache_root() / "features.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.executescript(
                "CREATE TABLE IF NOT EXISTS models (model TEXT PRIMARY KEY, key TEXT NOT NULL);"
                "CREATE TABLE IF NOT EXISTS features (model TEXT NOT NULL, hash BLOB NOT NULL, dim INTEGER NOT NULL,"
                " vec BLOB NOT NULL, PRIMARY KEY (model, hash)) WITHOUT ROWID;"
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                " hash BLOB NOT NULL) WITHOUT ROWID;")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(str(self.path), timeout=60)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    # -- model keys
    def model_id(self, key: dict[str, Any]) -> str:
        text = json.dumps(key, sort_keys=True)
        mid = hashlib.sha256(text.encode()).hexdigest()[:24]
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO models (model, key) VALUES (?, ?)", (mid, text))
        return mid

    # -- content hashes, remembered by (path, size, mtime)
    def content_hashes(self, items: Sequence[ImageLike], progress: bool = False) -> list[bytes]:
        db = self._db()
        out: list[bytes] = []
        fresh: list[tuple[str, int, int, bytes]] = []
        for item in tqdm(items, desc="hash images", unit="img", disable=not progress, leave=False):
            if isinstance(item, Image.Image):
                out.append(image_bytes_hash(item))
                continue
            p = os.path.abspath(os.fspath(item))
            st = os.stat(p)
            row = db.execute("SELECT size, mtime_ns, hash FROM files WHERE path = ?", (p,)).fetchone()
            if row and row[0] == st.st_size and row[1] == st.st_mtime_ns:
                out.append(bytes(row[2]))
                continue
            digest = image_bytes_hash(p)
            fresh.append((p, st.st_size, st.st_mtime_ns, digest))
            out.append(digest)
        if fresh:
            with db:
                db.executemany("INSERT OR REPLACE INTO files (path, size, mtime_ns, hash) VALUES (?, ?, ?, ?)", fresh)
        return out

    # -- features
    def get(self, model: str, hashes: Iterable[bytes]) -> dict[bytes, torch.Tensor]:
        db = self._db()
        keys = list(dict.fromkeys(hashes))
        found: dict[bytes, torch.Tensor] = {}
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            marks = ",".join("?" * len(part))
            for h, dim, vec in db.execute(f"SELECT hash, dim, vec FROM features WHERE model = ? AND hash IN ({marks})",
                                          (model, *part)):
                found[bytes(h)] = torch.from_numpy(np.frombuffer(vec, dtype=np.float32, count=dim).copy())
        return found

    def put(self, model: str, hashes: Sequence[bytes], features: torch.Tensor) -> None:
        feats = features.detach().float().cpu().contiguous().numpy()
        rows = [(model, h, feats.shape[1], feats[i].tobytes()) for i, h in enumerate(hashes)]
        with self._db() as db:
            db.executemany("INSERT OR REPLACE INTO features (model, hash, dim, vec) VALUES (?, ?, ?, ?)", rows)

    def count(self, model: str | None = None) -> int:
        q, args = ("SELECT COUNT(*) FROM features", ()) if model is None else \
            ("SELECT COUNT(*) FROM features WHERE model = ?", (model,))
        return int(self._db().execute(q, args).fetchone()[0])

    def clear(self, model: str | None = None) -> None:
        with self._db() as db:
            if model is None:
                db.execute("DELETE FROM features")
                db.execute("DELETE FROM models")
            else:
                db.execute("DELETE FROM features WHERE model = ?", (model,))
                db.execute("DELETE FROM models WHERE model = ?", (model,))


def model_key(backbone: Backbone, amp_dtype: torch.dtype | None = None,
              bounds: ImageBounds = DEFAULT_BOUNDS) -> dict[str, Any]:
    """What identifies a backbone's image features: spec, weights, preprocessing, autocast dtype (and the
    JPEG draft size when decoding is reduced)."""
    key = {"spec": backbone.spec or type(backbone).__qualname__, "weights": weights_fingerprint(backbone),
           "preprocess": preprocess_fingerprint(backbone), "autocast": str(amp_dtype) if amp_dtype else "float32",
           "features": "raw"}
    if bounds.draft_pixels is not None:
        key["draft_pixels"] = bounds.draft_pixels
    return key


def input_pixels(backbone: Backbone) -> int:
    """Height x width of the tensors the backbone's preprocessing makes (of a probe image)."""
    return int(np.prod(backbone.preprocess(_probe_images()[0]).shape[-2:]))


def draft_bounds(backbone: Backbone, factor: int = DRAFT_FACTOR) -> ImageBounds:
    """The default image bounds with JPEG draft decoding down to ``factor`` x the model's input pixels."""
    return dataclasses.replace(DEFAULT_BOUNDS, draft_pixels=factor * input_pixels(backbone))


# ---- the loader -------------------------------------------------------------------------------
class _Images(Dataset):
    def __init__(self, items: Sequence[ImageLike], preprocess: Any, bounds: ImageBounds = DEFAULT_BOUNDS) -> None:
        self.items = items
        self.preprocess = preprocess
        self.bounds = bounds

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(load_image(self.items[i], self.bounds))


def default_workers(n_images: int, batch_size: int, device: torch.device | str | None = None) -> int:
    """Worker processes for the loader. None for a couple of batches, nor on a CPU-only run with two cores
    or fewer (the model's threads already fill every core: decoding in worker processes only competes with
    them, measured slower than decoding between batches); else up to 4, leaving one core to the model."""
    cores = os.cpu_count() or 1
    on_cpu = device is None or torch.device(device).type == "cpu"
    if n_images <= 2 * batch_size or "fork" not in multiprocessing.get_all_start_methods() or (on_cpu and cores <= 2):
        return 0
    return max(1, min(4, cores - 1))


class _ThreadedBatches:
    """Batches of preprocessed pixels decoded by ``threads`` threads of this process, in order.

    Pillow releases the GIL while it decodes and resizes, so on a machine whose cores the model's threads
    fill, decoding a batch on every core between two model calls costs ``decode / cores`` per image
    instead of ``decode``, without worker processes competing with the model."""

    def __init__(self, dataset: "_Images", batch_size: int, threads: int) -> None:
        self.dataset, self.batch_size, self.threads = dataset, max(1, batch_size), max(1, threads)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        from concurrent.futures import ThreadPoolExecutor

        n = len(self.dataset)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="cirlab-decode") as pool:
            for start in range(0, n, self.batch_size):
                # decoding the next batch while the model runs was measured slower: both want every core
                idx = range(start, min(n, start + self.batch_size))
                yield torch.stack(list(pool.map(self.dataset.__getitem__, idx)))


def decode_threads() -> int:
    """Threads that decode between batches when no worker process does: one per core (at most 8)."""
    return max(1, min(8, os.cpu_count() or 1))


def image_loader(backbone: Backbone, items: Sequence[ImageLike], batch_size: int = 64,
                 num_workers: int | None = None, pin_memory: bool = False,
                 bounds: ImageBounds = DEFAULT_BOUNDS) -> "DataLoader | _ThreadedBatches":
    """Batches of preprocessed pixels, in order: decoded in forked worker processes, or, with no worker
    process, by one thread per core between the model's batches (``_ThreadedBatches``)."""
    workers = default_workers(len(items), batch_size, backbone.device) if num_workers is None else num_workers
    if workers == 0 and decode_threads() > 1 and not pin_memory:
        return _ThreadedBatches(_Images(items, backbone.preprocess, bounds), batch_size, decode_threads())
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs = {"multiprocessing_context": multiprocessing.get_context("fork"), "prefetch_factor": 4}
    return DataLoader(_Images(items, backbone.preprocess, bounds), batch_size=batch_size, shuffle=False,
                      num_workers=workers, pin_memory=pin_memory, **kwargs)


@torch.no_grad()
def encode_images(backbone: Backbone, images: Sequence[ImageLike], batch_size: int = 64, *,
                  num_workers: int | None = None, device: str | torch.device | None = "auto", amp: bool = True,
                  cache: FeatureCache | str | os.PathLike[str] | bool | None = True, progress: bool = True,
                  stats: EncodeStats | None = None, normalize: bool = True, draft: bool = False) -> torch.Tensor:
    """(N, D) float32 features of ``images`` (paths or PIL images), on the CPU: normalised, or the raw
    projected ones with ``normalize=False`` (what the cache stores).

    ``device="auto"`` moves a backbone that is on the CPU to the best device available (and leaves it
    there); ``device=None`` keeps it where it is. ``cache=True`` uses the default cache (``open_cache``);
    ``False``/``None``/``"off"`` encodes everything. ``stats`` (if given) is incremented with what was done.
    ``draft=True``: JPEG draft decoding (``draft_bounds``; slightly different features, their own cache key).
    """
    images = list(images)
    if device is not None:
        target = pick_device(device)
        if backbone.device != target and (device != "auto" or backbone.device.type == "cpu"):
            backbone.to(target)
    dev = backbone.device
    amp_dtype = autocast_dtype(dev, amp)
    bounds = draft_bounds(backbone) if draft else DEFAULT_BOUNDS
    store = open_cache(cache)
    out = torch.empty(len(images), backbone.embed_dim)
    if not images:
        return out
    todo: list[int] = list(range(len(images)))
    hashes: list[bytes] = []
    model = ""
    if store is not None:
        hashes = store.content_hashes(images, progress=progress and len(images) > 1000)
        model = store.model_id(model_key(backbone, amp_dtype, bounds))
        found = store.get(model, hashes)
        todo = []
        first: dict[bytes, int] = {}
        for i, h in enumerate(hashes):
            if h in found:
                out[i] = found[h]
            elif h not in first:            # identical images are encoded once
                first[h] = i
                todo.append(i)
    if stats is not None:
        stats.add(EncodeStats(len(images), len(images) - len(todo), len(todo)))
    if todo:
        was_training = backbone.training
        backbone.eval()
        loader = image_loader(backbone, [images[i] for i in todo], batch_size, num_workers,
                              pin_memory=dev.type == "cuda", bounds=bounds)
        ctx = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype else nullcontext()
        bar = tqdm(total=len(todo), desc="encode images", unit="img", disable=not progress, leave=False)
        done = 0
        try:
            for pixels in loader:
                with ctx:
                    feats = backbone.forward_images(pixels.to(dev, non_blocking=True), normalize=False).float().cpu()
                rows = todo[done:done + len(feats)]
                out[rows] = feats
                if store is not None:
                    store.put(model, [hashes[i] for i in rows], feats)
                done += len(feats)
                bar.update(len(feats))
        finally:
            bar.close()
            backbone.train(was_training)
        if store is not None and len(todo) < len(images):  # duplicates of encoded images
            index = {hashes[i]: i for i in todo}
            for i, h in enumerate(hashes):
                if h in index and index[h] != i:
                    out[i] = out[index[h]]
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


__all__ = ["DRAFT_FACTOR", "EncodeStats", "FeatureCache", "autocast_dtype", "cache_root", "default_cache_path",
           "default_workers", "draft_bounds", "encode_images", "image_bytes_hash", "image_loader", "input_pixels",
           "model_key", "open_cache", "pick_device", "preprocess_fingerprint", "weights_fingerprint"]
