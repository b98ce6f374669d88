"""Gallery-encoding throughput against the machine's limit, defined for a CPU and for a GPU.

Writes ``--images`` synthetic photos (JPEG, ``--size``, default 1600x1200: larger than any model input, as
photos are) to a temp dir, then measures in one run, round after round (``--rounds``, median kept):

* ``decode``: seconds per image to open, decode and preprocess it (``load_image`` + the backbone's
  ``preprocess``, one core), with full decoding and with JPEG draft decoding (``draft=True``);
* ``model``: seconds per image of ``forward_images`` on pre-made pixel tensors (all torch threads);
* the **limits**. GPU machine (model-bound): ``1 / model`` -- decoding runs on the CPU beside the GPU.
  CPU machine, where decoding and the model share the cores: ``1 / (decode / cores + model)`` -- all the
  CPU time goes either to decoding (parallel over the cores) or to the model (which already uses them
  all); no schedule of the two does better;
* ``pipeline``: ``cirlab.backbones.encoding.encode_images`` on the files with the worker count it picks
  itself (cache off), with and without ``draft``, and ``Backbone.encode_images`` (plain loop);

and prints images/s, the ratio pipeline / CPU limit (goal >= 0.9 on 2 cores) and how much draft decoding
changes the features (cosine similarity to the full-decode features).

    .venv/bin/python benchmarks/encode_throughput.py [--quick] [--backbone SPEC] [--images 128]
        [--size 1600x1200] [--batch-size 32] [--rounds 3] [--workers N] [--threads N]
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
from cirlab.backbones.encoding import default_workers, encode_images  # noqa: E402


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


def per_image(fn, items) -> float:
    t = time.perf_counter()
    for it in items:
        fn(it)
    return (time.perf_counter() - t) / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="48 images of 1600x1200, 2 rounds")
    ap.add_argument("--backbone", default=None, help="backbone spec (default: random 'small' hf CLIP, 224 px)")
    ap.add_argument("--images", type=int, default=None, help="default 128 (quick 48)")
    ap.add_argument("--size", default="1600x1200", help="synthetic photo size WxH")
    ap.add_argument("--batch-size", type=int, default=None, help="default 32 (quick 16)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: what encode_images picks)")
    ap.add_argument("--rounds", type=int, default=None, help="default 3 (quick 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    n_img = args.images or (48 if args.quick else 128)
    bs = args.batch_size or (16 if args.quick else 32)
    n_rounds = args.rounds or (2 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    from cirlab.backbones.base import load_image
    from cirlab.backbones.encoding import draft_bounds

    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        spec = args.backbone
        if spec is None:
            from cirlab.backbones.hf_random import make_random_hf

            spec = f"hf:{make_random_hf(tmp_p / 'model', 'clip', 'small')}"
        bb = create_backbone(spec)
        w, h = (int(v) for v in args.size.split("x"))
        paths = make_photos(tmp_p, n_img, (w, h))
        cores = os.cpu_count() or 1
        workers = default_workers(len(paths), bs, bb.device) if args.workers is None else args.workers
        bounds = draft_bounds(bb)
        print(f"backbone {spec}  images {len(paths)} ({w}x{h} JPEG)  batch {bs}  torch threads "
              f"{torch.get_num_threads()}  loader workers {workers} (auto: {args.workers is None})  cores {cores}  "
              f"draft decodes to >= {bounds.draft_pixels} px")
        pixels = bb.preprocess_batch(paths[:bs])
        n_batches = (len(paths) + bs - 1) // bs

        def model_s() -> float:
            with torch.no_grad():
                t = time.perf_counter()
                for b in range(n_batches):
                    bb.forward_images(pixels[: min(bs, len(paths) - b * bs)])
                return (time.perf_counter() - t) / len(paths)

        sample = paths[: max(8, len(paths) // 4)]
        with torch.no_grad():
            bb.forward_images(pixels)               # warm-up
        rows = []
        for r in range(n_rounds):  # alternate every measurement so a change in load hits all alike
            dec = per_image(lambda p: bb.preprocess(load_image(p)), sample)
            dec_draft = per_image(lambda p: bb.preprocess(load_image(p, bounds)), sample)
            mod = model_s()
            pipe_s, feats = timed(encode_images, bb, paths, batch_size=bs, num_workers=workers, cache=False,
                                  progress=False)
            draft_s, feats_draft = timed(encode_images, bb, paths, batch_size=bs, num_workers=workers, cache=False,
                                         progress=False, draft=True)
            mod = (mod + model_s()) / 2
            row = {"decode": dec, "decode_draft": dec_draft, "model": mod, "pipeline": len(paths) / pipe_s,
                   "pipeline_draft": len(paths) / draft_s, "cpu_limit": 1 / (dec / cores + mod),
                   "cpu_limit_draft": 1 / (dec_draft / cores + mod), "gpu_limit": 1 / mod}
            rows.append(row)
            print(f"round {r + 1}: decode {1000 * dec:.1f} ms/img (draft {1000 * dec_draft:.1f}), model "
                  f"{1000 * mod:.1f} ms/img, pipeline {row['pipeline']:.1f} img/s = "
                  f"{row['pipeline'] / row['cpu_limit']:.3f} of the CPU limit; with draft "
                  f"{row['pipeline_draft']:.1f} img/s = {row['pipeline_draft'] / row['cpu_limit_draft']:.3f}",
                  flush=True)
        plain_s, plain = timed(bb.encode_images, paths, batch_size=bs)
        assert torch.allclose(feats, plain, atol=1e-5)
        cos = (feats * feats_draft).sum(1)

        def med(key: str) -> float:
            return float(np.median([r[key] for r in rows]))

        def med_ratio(a: str, b: str) -> float:
            return float(np.median([r[a] / r[b] for r in rows]))

        print(f"\n| measure | value |\n|---|---:|")
        print(f"| decode + preprocess, full decode | {1000 * med('decode'):.1f} ms/img (1 core) |")
        print(f"| decode + preprocess, JPEG draft | {1000 * med('decode_draft'):.1f} ms/img (1 core) |")
        print(f"| model (forward_images on tensors) | {1000 * med('model'):.1f} ms/img ({torch.get_num_threads()} threads) |")
        print(f"| GPU-machine limit (model-bound) 1/model | {med('gpu_limit'):.1f} img/s |")
        print(f"| CPU limit 1/(decode/{cores} + model) | {med('cpu_limit'):.1f} img/s |")
        print(f"| CPU limit with draft decoding | {med('cpu_limit_draft'):.1f} img/s |")
        print(f"| pipeline (encode_images, {workers} workers) | {med('pipeline'):.1f} img/s = "
              f"**{med_ratio('pipeline', 'cpu_limit'):.3f}** of the CPU limit |")
        print(f"| pipeline with draft=True | {med('pipeline_draft'):.1f} img/s = "
              f"**{med_ratio('pipeline_draft', 'cpu_limit_draft'):.3f}** of its CPU limit, "
              f"{med('pipeline_draft') / med('pipeline'):.2f}x the full-decode pipeline |")
        print(f"| plain loop (Backbone.encode_images) | {len(paths) / plain_s:.1f} img/s |")
        print(f"| draft vs full features: cosine mean / min | {cos.mean():.5f} / {cos.min():.5f} |")

if __name__ == "__main__":
    import _machine

    sys.exit(_machine.run(main))
