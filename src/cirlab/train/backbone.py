"""Contrastive (CLIP-style) training of the ``tiny`` backbone on image-caption pairs.

Captions (``captions``):

- ``world``: the gallery's captions (the world writes several full descriptions per image
  under ``meta.captions``); the words of the triplet texts join the vocabulary (not the
  supervision). This is how ``tiny:world`` was trained.
- ``alttext``: web-like alt-text drawn from each image's scene (``cirlab.world.alttext``:
  partial, counts, relations, chatter, noise); the vocabulary is the corpus's own, and the
  triplets are read only to report which of their words the corpus missed.

``text_encoder`` (``mean`` or ``clip``) picks the text tower (see ``TinyConfig``).

``init_vision`` starts the image tower (and the temperature) from another tiny checkpoint of
the same vision shape; with ``lock_image`` it stays frozen and only the text tower learns, as in
LiT (locked-image text tuning): the image features are computed once, so a step costs a text
forward and backward only.
"""
from __future__ import annotations

import json
import sys
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..backbones.base import length_grouped
from ..backbones.tiny import TinyBackbone, TinyConfig, WordTokenizer
from ..data.jsonl import iter_jsonl, read_gallery
from ..errors import DatasetError
from .estimate import RunEstimate
from .optim import adamw


@dataclass
class BackboneTrainConfig:
    data: str
    out: str
    eval_data: str | None = None
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    max_steps: int | None = None
    seed: int = 0
    threads: int | None = None
    width: int = 128
    depth: int = 4
    text_depth: int = 3
    embed_dim: int = 128
    image_size: int = 64
    patch_size: int = 8
    captions: str = "world"        # "world" or "alttext"
    alt_per_image: int = 8         # alttext captions drawn per image
    text_encoder: str = "mean"     # "mean" or "clip"
    init_vision: str | None = None # a tiny backbone spec whose image tower starts this one
    lock_image: bool = False       # keep that image tower frozen (LiT)
    image_cache: str | None = None # lock_image: keep the locked image features in this safetensors file


def _alt_captions(root: Path, per_image: int, seed: int) -> tuple[list[str], list[list[str]], list[Path]]:
    from ..world.alttext import alt_corpus
    from ..world.scene import Scene

    gal = read_gallery(root)
    scenes = []
    for image_id, m in zip(gal.ids, gal.meta):
        if "objects" not in (m or {}):
            raise DatasetError(f"{root}/gallery.jsonl: image {image_id!r} has no meta.objects (alttext needs the "
                               f"world's scenes)")
        scenes.append(Scene.from_list(m["objects"]))
    return gal.ids, alt_corpus(scenes, seed, per_image), gal.paths


def _query_words(root: Path) -> set[str]:
    """Every word of the split's query texts (all registers), to check the vocabulary covers them."""
    words: set[str] = set()
    trip = root / "triplets.jsonl"
    if trip.is_file():
        for _, obj in iter_jsonl(trip):
            texts = [obj.get("caption", "")] + list(((obj.get("meta") or {}).get("texts") or {}).values())
            for t in texts:
                words |= set(WordTokenizer.words(t))
    return words


def _locked_features(model: TinyBackbone, pixels: torch.Tensor, paths: list[Path], cfg: BackboneTrainConfig,
                     progress: bool) -> torch.Tensor:
    """The frozen image tower's features of every training image (read from / written to ``cfg.image_cache``)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(json.dumps([cfg.init_vision, [str(p) for p in paths]]).encode()).hexdigest()[:16]
    cache = Path(cfg.image_cache) if cfg.image_cache else None
    if cache is not None and cache.is_file():
        stored = load_file(str(cache))
        if f"features-{key}" in stored:
            return stored[f"features-{key}"]
    with torch.no_grad():
        feats = torch.cat([model.forward_images(_normalise(model, pixels[i:i + 256]))
                           for i in tqdm(range(0, len(pixels), 256), desc="encode locked images", unit="batch",
                                         disable=not progress)])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        save_file({f"features-{key}": feats.contiguous()}, str(tmp))
        tmp.replace(cache)
    return feats


def _captions(root: Path) -> tuple[list[str], list[list[str]], list[Path]]:
    gal = read_gallery(root)
    caps: list[list[str]] = []
    for image_id, c, m in zip(gal.ids, gal.captions, gal.meta):
        options = [x for x in (m.get("captions") or []) if isinstance(x, str)] + ([c] if c else [])
        if not options:
            raise DatasetError(f"{root}/gallery.jsonl: image {image_id!r} has no caption to train on")
        caps.append(options)
    return gal.ids, caps, gal.paths


def _load_pixels(paths: list[Path], size: int, progress: bool) -> torch.Tensor:
    arr = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc="load images", unit="img", disable=not progress)):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr[i] = np.asarray(im)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _normalise(model: TinyBackbone, u8: torch.Tensor) -> torch.Tensor:
    return (u8.float() / 255.0 - model.mean) / model.std


@torch.no_grad()
def retrieval_eval(model: TinyBackbone, pixels: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Image->text and text->image R@1/R@5 (percent) on paired images and captions."""
    model.eval()
    img = torch.cat([model.forward_images(_normalise(model, pixels[i:i + 512])) for i in range(0, len(pixels), 512)])
    txt = torch.cat([model.forward_texts(model.tokenize(captions[i:i + 512])) for i in range(0, len(captions), 512)])
    sim = img @ txt.T
    gt = torch.arange(len(img))
    out = {}
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        ranks = (s > s[gt, gt].unsqueeze(1)).sum(1)
        for k in (1, 5):
            out[f"{name}_recall@{k}"] = round(100.0 * float((ranks < k).float().mean()), 2)
    model.train()
    if not any(p.requires_grad for p in model.visual.parameters()):
        model.visual.eval()
    return out


def train_backbone(cfg: BackboneTrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train a tiny backbone and save it to ``cfg.out``; returns the training summary."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    root = Path(cfg.data)
    if cfg.captions == "alttext":
        _, caps, paths = _alt_captions(root, cfg.alt_per_image, cfg.seed)
        vocab_texts = [c for options in caps for c in options]
    elif cfg.captions == "world":
        _, caps, paths = _captions(root)
        vocab_texts = [c for options in caps for c in options]
        trip = root / "triplets.jsonl"
        if trip.is_file():  # words of the modification texts join the vocabulary (not the supervision)
            vocab_texts += [obj.get("caption", "") for _, obj in iter_jsonl(trip)]
    else:
        raise DatasetError(f"captions {cfg.captions!r}: expected 'world' or 'alttext'")
    vocab = WordTokenizer.build_vocab(vocab_texts)
    missing = sorted(_query_words(root) - set(vocab))
    model_cfg = TinyConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, vision_width=cfg.width,
                           vision_depth=cfg.depth, text_width=cfg.width, text_depth=cfg.text_depth,
                           embed_dim=cfg.embed_dim, vocab=vocab, text_encoder=cfg.text_encoder)
    model = TinyBackbone(model_cfg)
    if cfg.init_vision:
        from ..backbones import create_backbone

        src = create_backbone(cfg.init_vision)
        if not isinstance(src, TinyBackbone):
            raise DatasetError(f"init_vision {cfg.init_vision!r}: not a tiny backbone")
        try:
            model.visual.load_state_dict(src.visual.state_dict())
        except RuntimeError as e:
            raise DatasetError(f"init_vision {cfg.init_vision!r}: image tower of another shape ({e})") from None
        model.logit_scale.data.copy_(src.logit_scale.data)
    if cfg.lock_image and not cfg.init_vision:
        raise DatasetError("lock_image needs init_vision (a trained image tower to lock)")
    model.train()
    pixels = _load_pixels(paths, cfg.image_size, progress)
    locked = None
    if cfg.lock_image:
        for p in model.visual.parameters():
            p.requires_grad_(False)
        model.visual.eval()
        locked = _locked_features(model, pixels, paths, cfg, progress)
    eval_set = None
    if cfg.eval_data:
        _, ecaps, epaths = _captions(Path(cfg.eval_data))
        n = min(1000, len(epaths))
        eval_set = (_load_pixels(epaths[:n], cfg.image_size, False), [c[-1] for c in ecaps[:n]])

    steps_per_epoch = max(1, len(paths) // cfg.batch_size)
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2 and "embed" not in n and "pos" not in n]
    no_decay = [p for n, p in trainable if not (p.ndim >= 2 and "embed" not in n and "pos" not in n)]
    opt = adamw([{"params": decay, "weight_decay": cfg.weight_decay},
                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    log: list[dict[str, Any]] = []
    step = 0
    loss_sum, loss_n = 0.0, 0  # the logged loss is the mean over the steps since the last entry (one batch is noisy)
    t0 = time.time()
    detail = f"--max-steps {cfg.max_steps}" if cfg.max_steps else f"{cfg.epochs} epochs x {steps_per_epoch}"
    estimate = RunEstimate("train tiny backbone", total, detail, "--max-steps N for fewer", enabled=progress)
    bar = tqdm(total=total, desc="train tiny backbone", unit="step", disable=not progress)
    while step < total:
        order = torch.randperm(len(paths))
        for start in range(0, len(order) - cfg.batch_size + 1 if len(order) >= cfg.batch_size else 1,
                           cfg.batch_size):
            if step >= total:
                break
            idx = order[start:start + cfg.batch_size]
            texts = [rng.choice(caps[i]) for i in idx.tolist()]
            img = locked[idx] if locked is not None else model.forward_images(_normalise(model, pixels[idx]))
            txt = length_grouped(model, model.tokenize(texts), lambda tk, rows: model.forward_texts(tk))
            scale = model.logit_scale.exp().clamp(max=100)
            logits = scale * img @ txt.T
            gt = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, gt) + F.cross_entropy(logits.T, gt)) / 2
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
            opt.step()
            step += 1
            estimate.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
            if step % steps_per_epoch == 0 or step == total:
                entry: dict[str, Any] = {"step": step, "loss": round(loss_sum / loss_n, 4),
                                         "seconds": round(time.time() - t0, 1)}
                if eval_set is not None and (step == total or step % (steps_per_epoch * 2) == 0):
                    entry.update(retrieval_eval(model, *eval_set))
                log.append(entry)
                loss_sum, loss_n = 0.0, 0
                if progress:
                    tqdm.write(json.dumps(entry), file=sys.stderr)
    bar.close()
    summary = {"config": asdict(cfg), "steps": step, "seconds": round(time.time() - t0, 1), "log": log,
               "images": len(paths), "captions": sum(len(c) for c in caps), "vocabulary": len(vocab),
               "query_words_missing": missing, "threads": torch.get_num_threads()}
    if eval_set is not None:
        summary["eval"] = retrieval_eval(model, *eval_set)
    model.spec = f"tiny:{cfg.out}"
    model.save(cfg.out, dtype=torch.float16, extra=summary)
    return summary
