"""Gallery-encoding throughput against the model-bound limit.

Writes ``--images`` synthetic photos (JPEG, ``--size``) to a temp dir, then measures in one run:

* model-bound: the backbone's ``forward_images`` on pre-made pixel tensors in a tight loop
  (no decoding, no preprocessing, no I/O): the most any encoder could reach;
* pipeline: ``cirlab.backbones.encoding.encode_images`` on the files (DataLoader workers decode and
  preprocess while the model runs), with the feature cache off;
* cached: the same call again with the cache on and already filled (an unchanged gallery);
* plain: ``Backbone.encode_images`` (single process, preprocess then forward, batch by batch).

and prints images/s for each and the ratio pipeline / model-bound. The default model is a
randomly initialised ViT-S/32-sized CLIP (``hf_random`` "small", real transformers code, 224 px).

    .venv/bin/python benchmarks/encode_throughput.py [--backbone SPEC] [--images 256] [--batch-size 32]
        [--rounds 3] [--workers N] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cirlab.backbones import create_backbone  # noqa: E402
from cirlab.backbones.encoding import FeatureCache, default_workers, encode_images  # noqa: E402


def make_photos(out: Path, n: int, size: tuple[int, int]) -> list[str]:
    rng = np.random.default_rng(0)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(n):
        base = np.stack([(x * (i % 7 + 1)) % 256, (y * (i % 5 + 2)) % 256, ((x + y + 13 * i) // 3) % 256], -1)
        noise = rng.integers(0, 40, size=(h, w, 3))
        p = out / f"photo-{i:05d}.jpg"
        Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=None, help="backbone spec (default: random 'small' hf CLIP)")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", default="480x360", help="synthetic photo size WxH")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: auto)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        spec = args.backbone
        if spec is None:
            from cirlab.backbones.hf_random import make_random_hf

            spec = f"hf:{make_random_hf(tmp_p / 'model', 'clip', 'small')}"
        bb = create_backbone(spec)
        w, h = (int(v) for v in args.size.split("x"))
        paths = make_photos(tmp_p, args.images, (w, h))
        bs = args.batch_size
        workers = default_workers(len(paths), bs) if args.workers is None else args.workers
        print(f"backbone {spec}  images {len(paths)} ({w}x{h} JPEG)  batch {bs}  torch threads "
              f"{torch.get_num_threads()}  loader workers {workers}  cores {os.cpu_count()}")

        # model-bound: the same forward pass on pre-made tensors. Rounds alternate model-bound and
        # pipeline runs so that a change in machine load hits both; the ratio is the median over rounds.
        pixels = bb.preprocess_batch(paths[:bs])
        n_batches = (len(paths) + bs - 1) // bs

        def model_bound() -> float:
            with torch.no_grad():
                t = time.perf_counter()
                for b in range(n_batches):
                    bb.forward_images(pixels[: min(bs, len(paths) - b * bs)])
                return len(paths) / (time.perf_counter() - t)

        with torch.no_grad():
            bb.forward_images(pixels)               # warm-up
        encode_images(bb, paths[:bs], batch_size=bs, num_workers=0, cache=False, progress=False)  # warm-up
        rounds = []
        for r in range(args.rounds):
            m = model_bound()
            pipe_s, feats = timed(encode_images, bb, paths, batch_size=bs, num_workers=workers, cache=False,
                                  progress=False)
            m2 = model_bound()
            rounds.append((len(paths) / pipe_s, (m + m2) / 2))
            print(f"round {r + 1}: model-bound {m:7.1f} / {m2:7.1f} img/s, pipeline {len(paths) / pipe_s:7.1f} img/s, "
                  f"ratio {len(paths) / pipe_s / ((m + m2) / 2):.3f}")
        cache = FeatureCache(tmp_p / "cache.sqlite")
        encode_images(bb, paths, batch_size=bs, num_workers=workers, cache=cache, progress=False)
        cached_s, cached = timed(encode_images, bb, paths, batch_size=bs, num_workers=workers, cache=cache,
                                 progress=False)
        m = model_bound()
        plain_s, plain = timed(bb.encode_images, paths, batch_size=bs)
        plain_ratio = len(paths) / plain_s / ((m + model_bound()) / 2)
        assert torch.allclose(feats, plain, atol=1e-5) and torch.equal(cached, feats.float())

        ratios = sorted(p / mb for p, mb in rounds)
        print(f"model-bound   {np.median([mb for _, mb in rounds]):8.1f} img/s   (forward_images on pre-made tensors)")
        print(f"pipeline      {np.median([p for p, _ in rounds]):8.1f} img/s   (encode_images, cache off)")
        print(f"plain         {len(paths) / plain_s:8.1f} img/s   (Backbone.encode_images)")
        print(f"cached rerun  {len(paths) / cached_s:8.1f} img/s   ({cached_s:.3f} s for the unchanged gallery)")
        print(f"ratio pipeline / model-bound = {ratios[len(ratios) // 2]:.3f}  (median of {len(ratios)} rounds)")
        print(f"ratio plain / model-bound    = {plain_ratio:.3f}")


if __name__ == "__main__":
    import _machine

    sys.exit(_machine.run(main))
