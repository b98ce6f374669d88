"""The world's renderer as a triplet generator, with a style shift and its domain adaptation.

``WorldGenerator(style)`` turns text triplets whose descriptions are in the world's
language ("a small red circle at the top left and a large blue star in the center")
into image triplets, drawn with a ``Style`` (palette shift, background, jitter,
scale, noise, blur). The default generator style ``UNADAPTED`` differs from the
'real' world's, so synthetic and real images have a measurable domain gap
(``feature_gap``).

``fit_style`` is **the world's analog of CIR-LoRA**: given a few real images with their
descriptions (32-shot), it fits the generator's style to them by analysis by
synthesis, as CIR-LoRA fits a text-to-image model to the target domain from the same
few samples: the background is the median colour of the image corners, the noise level
the median spread there (both kept only when they bring the renders closer than the
initial style), palette shift, object scale, blur and noise minimise the distance
between colour histograms of the real images and renders of their descriptions
(coordinate descent over a grid; histograms ignore where objects are), and jitter
comes from how far object centres in one-object real images sit from where a
jitter-free render puts them (centres against each image's own border-fitted background plane,
so shading is not read as an object). The world's camera (``scene.Effects``: texture, shading,
tilt, occluders, clutter) is outside the style, so the fitted distance stays above zero.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.jsonl import write_jsonl
from ..world.generate import hash_seed
from ..world.scene import CELLS, COLOURS, DEFAULT_STYLE, SHAPES, SIZES, Obj, Scene, Style, render
from .triplets import TextTriplet

#: the unadapted generator's style: what a generic generator gets wrong about the target domain
UNADAPTED = Style(background=(200, 212, 228), colour_shift=(30, -25, 25), jitter=0.12, scale=0.8, noise=10.0,
                  blur=0.8)
REAL = DEFAULT_STYLE

_CELL_ALT = "|".join(sorted((re.escape(c) for c in CELLS), key=len, reverse=True))
_OBJ_RE = re.compile(rf"\b({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) (?:at|in) the ({_CELL_ALT})\b")
_FILLER = {"a", "an", "there", "is", "are", "picture", "of", "image", "with", "and"}


def parse_description(text: str) -> Scene:
    """A world description (``cirlab.world.caption``'s language) -> its scene; ``ValueError`` if it is not one."""
    low = text.lower().strip().rstrip(".")
    objs = [Obj(CELLS.index(m.group(4)), m.group(3), m.group(2), m.group(1)) for m in _OBJ_RE.finditer(low)]
    rest = [w for w in re.split(r"[\s,;]+", _OBJ_RE.sub(" ", low)) if w]
    if not objs or any(w not in _FILLER for w in rest):
        raise ValueError(f"not a world description: {text!r}")
    return Scene.of(objs)  # ValueError when two objects share a cell


class WorldGenerator:
    """Text triplets in the world's language -> an image-triplet dataset in the cirlab format."""

    name = "world"

    def __init__(self, style: Style = UNADAPTED, resolution: int = 64, seed: int = 0) -> None:
        self.style, self.resolution, self.seed = style, resolution, seed

    def check(self, t: TextTriplet) -> str | None:
        """None when both descriptions can be rendered, else why not (a scripter's domain check)."""
        try:
            if parse_description(t.reference) == parse_description(t.target):
                return "reference and target are the same scene"
        except ValueError as e:
            return str(e)
        return None

    def render(self, scene: Scene, key: str) -> Image.Image:
        return render(scene, self.resolution, self.style, random.Random(hash_seed(self.seed, key)))

    def generate(self, triplets: Sequence[TextTriplet], out: str | os.PathLike[str], progress: bool = True) -> Path:
        """Write ``out/gallery.jsonl``, ``out/triplets.jsonl``, ``out/images/`` and ``out/dataset.json``."""
        root = Path(out)
        img_dir = root / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        ids: dict[str, str] = {}
        scenes: dict[str, Scene] = {}
        rows: list[dict[str, Any]] = []
        skipped = 0
        for n, t in enumerate(triplets):
            if self.check(t) is not None:
                skipped += 1
                continue
            pair = []
            for text in (t.reference, t.target):
                scene = parse_description(text)
                if scene.key not in ids:
                    ids[scene.key] = f"syn-{len(ids):06d}"
                    scenes[ids[scene.key]] = scene
                pair.append(ids[scene.key])
            rows.append({"id": f"syn-q{n:06d}", "reference": pair[0], "caption": t.modification, "targets": [pair[1]],
                         "meta": {**t.meta, "reference_text": t.reference, "target_text": t.target}})
        gallery = []
        for image_id, scene in tqdm(scenes.items(), desc="render synthetic", unit="img", disable=not progress):
            path = img_dir / f"{image_id}.png"
            self.render(scene, image_id).save(path, compress_level=1)
            gallery.append({"id": image_id, "path": f"images/{image_id}.png", "caption": _describe(scene),
                            "meta": {"objects": scene.to_list()}})
        write_jsonl(root / "gallery.jsonl", gallery)
        write_jsonl(root / "triplets.jsonl", rows)
        info = {"name": "synthetic-world", "generator": self.name, "style": self.style.to_dict(),
                "resolution": self.resolution, "seed": self.seed, "images": len(gallery), "queries": len(rows),
                "skipped": skipped}
        (root / "dataset.json").write_text(json.dumps(info, indent=1))
        return root


def _describe(scene: Scene) -> str:
    from ..world.scene import caption

    return caption(scene)


# ---- the world's CIR-LoRA: fit the generator's style to a few real samples -------------------------

@dataclass
class StyleFit:
    style: Style
    report: dict[str, Any]


def _hist(img: np.ndarray, bins: int = 32) -> np.ndarray:
    return np.concatenate([np.bincount(img[..., c].ravel().astype(np.int64) * bins // 256, minlength=bins) for c in range(3)]
                          ).astype(np.float64) / img[..., 0].size


def _corners(img: np.ndarray, k: int) -> list[np.ndarray]:
    return [img[:k, :k], img[:k, -k:], img[-k:, :k], img[-k:, -k:]]


def _background_plane(img: np.ndarray, k: int) -> np.ndarray:
    """Per-channel linear fit (a + b x + c y) to the ``k``-pixel border ring: a background with shading."""
    h, w, _ = img.shape
    yy, xx = np.mgrid[:h, :w]
    ring = np.zeros((h, w), dtype=bool)
    ring[:k], ring[-k:], ring[:, :k], ring[:, -k:] = True, True, True, True
    design = np.stack([np.ones(int(ring.sum())), xx[ring], yy[ring]], 1)
    values = img[ring].astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)  # (3, channels)
    # one pass of outlier rejection: objects or clutter touching the border must not tilt the plane
    resid = np.abs(values - design.dot(coef)).sum(-1)
    keep = resid <= max(np.median(resid) * 3, 1e-9)
    if keep.sum() >= 3:
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
    return np.stack([np.ones(h * w), xx.ravel(), yy.ravel()], 1).dot(coef).reshape(h, w, -1)


def _object_centre(img: np.ndarray, thresh: float, k: int) -> np.ndarray | None:
    """Centre of the pixels standing out from the image's own (shaded) background; medians, so specks of
    clutter and a partial occluder move it little. ``None`` when fewer than 4 pixels stand out."""
    diff = np.abs(img.astype(np.float64) - _background_plane(img, k)).sum(-1)
    ys, xs = np.nonzero(diff > thresh)
    return None if len(xs) < 4 else np.array([np.median(xs), np.median(ys)])


def fit_style(images: Sequence[Image.Image], descriptions: Sequence[str], init: Style = UNADAPTED,
              sweeps: int = 2, seed: int = 0) -> StyleFit:
    """Fit a generator style to real ``images`` of the scenes ``descriptions`` say (the world's CIR-LoRA)."""
    if len(images) != len(descriptions) or not images:
        raise ValueError(f"fit_style: {len(images)} images for {len(descriptions)} descriptions")
    scenes = [parse_description(d) for d in descriptions]
    real = [np.asarray(im.convert("RGB")) for im in images]
    res = real[0].shape[0]
    k = max(2, res // 16)
    corners = np.concatenate([c.reshape(-1, 3) for im in real for c in _corners(im, k)])
    background = tuple(int(v) for v in np.median(corners, axis=0).round())
    spreads = [c.reshape(-1, 3).astype(np.float64).std(0, ddof=1).mean() for im in real for c in _corners(im, k)]
    noise = float(np.median(spreads))
    noise = round(noise, 2) if noise > 1.0 else 0.0
    style = replace(init, background=background, noise=noise, jitter=0.0)
    real_h = [_hist(im) for im in real]

    def distance(st: Style) -> float:
        return float(np.mean([np.abs(_hist(np.asarray(render(s, res, st, random.Random(seed + n)))) - h).sum()
                              for n, (s, h) in enumerate(zip(scenes, real_h))]))

    before = distance(replace(init, jitter=0.0))
    grids: dict[str, list[Any]] = {"scale": [round(0.5 + 0.05 * i, 2) for i in range(21)],
                                   "blur": [round(0.25 * i, 2) for i in range(11)],
                                   "noise": [0.0, 2.0, 4.0, 6.0, 8.0, 12.0]}
    shift_grid = list(range(-80, 81, 8))
    # the corner estimates can mislead (shading or clutter read as noise): start from the best of them,
    # the corner background without noise, and the initial style
    starts = [style, replace(style, noise=0.0), replace(init, jitter=0.0)]
    scored = [(distance(st), n) for n, st in enumerate(starts)]
    best, pick = min(scored)
    style = starts[pick]
    for _ in range(sweeps):
        for c in range(3):
            for v in shift_grid:
                cs = list(style.colour_shift)
                cs[c] = v
                cand = replace(style, colour_shift=tuple(cs))
                d = distance(cand)
                if d < best - 1e-9:
                    best, style = d, cand
        for name, grid in grids.items():
            for v in grid:
                cand = replace(style, **{name: v})
                d = distance(cand)
                if d < best - 1e-9:
                    best, style = d, cand
    # jitter: displacement of the object in one-object images vs a jitter-free render of the same scene
    # (each image's background is its own border-fitted plane, so the camera's shading does not read as
    # object pixels; with one flat background colour it did, and the estimate saturated near 1.5 cells)
    thresh = 3 * noise + 40
    cell = res / 3
    offsets = []
    for s, im in zip(scenes, real):
        if len(s.objects) != 1:
            continue
        a = _object_centre(im, thresh, k)
        flat = np.asarray(render(s, res, replace(style, noise=0.0, jitter=0.0)))  # background known exactly
        diff = np.abs(flat.astype(np.float64) - np.array(style.background, dtype=np.float64)).sum(-1)
        ys, xs = np.nonzero(diff > thresh)
        b = np.array([np.median(xs), np.median(ys)]) if len(xs) >= 4 else None
        if a is not None and b is not None:
            offsets += list(np.abs(a - b) / cell)
    jitter = round(float(2 * np.mean(offsets)), 3) if offsets else 0.0
    style = replace(style, jitter=jitter if jitter > 0.02 else 0.0)
    report = {"images": len(real), "one_object_images": len(offsets) // 2, "histogram_distance_before": round(before, 4),
              "histogram_distance_after": round(best, 4), "initial": init.to_dict(), "fitted": style.to_dict()}
    return StyleFit(style, report)


def frechet_diagonal(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between diagonal Gaussians fitted to two feature sets (a cheap FID-like domain gap)."""
    a, b = a.double(), b.double()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + ((a.std(0) - b.std(0)) ** 2).sum())


__all__ = ["REAL", "StyleFit", "UNADAPTED", "WorldGenerator", "fit_style", "frechet_diagonal", "parse_description"]
