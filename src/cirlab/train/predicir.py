"""Training PrediCIR on image-caption pairs (zero-shot: triplets are never read).

Each step draws images, a random crop of each (the source view, see
``methods/predicir/views.py``) and one of its captions (the action). With the
backbone frozen:

- **target content prediction** (JEPA-style): the predictor sees the source view's
  patch tokens and the action and predicts the full image's patch tokens (the
  target view, layer-normalised, from the frozen backbone); smooth-L1 over the
  patches outside the crop, ``visible_weight`` times that over the ones inside;
- **predictive cross-modal alignment**: the fusion turns the predicted latents and
  the source view's global feature into a pseudo word; the text feature of the
  prompt with it (``"a photo of $"``, or with probability ``caption_in_prompt``
  ``"a photo of $ that {caption}"``) is matched to the full image's global feature
  by a symmetric InfoNCE over the batch.

With probability ``action_dropout`` the action is the text feature of the empty
string, so the pseudo word cannot come from the caption alone.

Loss = prediction + ``lambda_align`` * alignment.
"""
from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..backbones.base import Backbone
from ..data import read_gallery
from ..errors import CirlabError, DatasetError
from ..methods.predicir.model import (
    PrediCIRCheckpoint,
    PrediCIRModel,
    backbone_geometry,
    new_model,
)
from ..methods.predicir.views import (
    CropBox,
    ViewConfig,
    sample_crop,
    source_views,
    visible_masks,
)
from ..methods.textual_inversion.prompts import get_templates
from .estimate import RunEstimate
from .optim import adamw
from .zeroshot import ZEROSHOT_TRAINERS, ZeroShotContext


@dataclass
class PrediCIRTrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    width: int = 128
    depth: int = 2
    heads: int = 4
    fuse_hidden: int = 512
    views: ViewConfig = field(default_factory=ViewConfig)
    prompts: str = "world"
    temperature: float = 0.05
    lambda_align: float = 1.0
    visible_weight: float = 0.25
    caption_in_prompt: float = 0.0
    action_dropout: float = 0.3
    max_images: int = 8192
    seed: int = 0
    log_every: int = 50

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def frozen(backbone: Backbone) -> Iterator[None]:
    """No gradients into the backbone (restores its requires_grad flags after)."""
    flags = [p.requires_grad for p in backbone.parameters()]
    was_training = backbone.training
    backbone.requires_grad_(False).eval()
    try:
        yield
    finally:
        for p, f in zip(backbone.parameters(), flags):
            p.requires_grad_(f)
        backbone.train(was_training)


class WorldViewData:
    """Image-caption pairs with what training needs precomputed by the frozen backbone.

    ``pixels`` (N, C, H, W, fp16, preprocessed), ``target_tokens`` (N, P, W, fp16: the
    full images' patch tokens), ``target_global`` (N, D), ``captions`` (N lists) and
    ``caption_features`` (N, K, D: K captions per image, repeated when fewer).
    """

    def __init__(self, source: str | Path, backbone: Backbone, max_images: int | None = None, seed: int = 0,
                 batch_size: int = 128, progress: bool = True) -> None:
        root = Path(source)
        if not root.exists():
            raise CirlabError(f"{root}: no such dataset directory or gallery")
        gal = read_gallery(root)
        rows = list(range(len(gal)))
        random.Random(seed).shuffle(rows)
        if max_images:
            rows = sorted(rows[:max_images])
        self.source = str(root)
        self.paths, self.captions = [], []
        for r in rows:
            opts = [c for c in (gal.meta[r].get("captions") or []) if isinstance(c, str) and c.strip()]
            opts = opts or ([gal.captions[r]] if gal.captions[r] else [])
            if opts:
                self.paths.append(gal.paths[r])
                self.captions.append(opts)
        if not self.paths:
            raise DatasetError(f"{root}: no captioned images (PrediCIR trains on image-caption pairs: gallery.jsonl "
                               f"needs 'caption' or meta.captions)")
        self.width, self.grid, self.patch = backbone_geometry(backbone)
        dev = backbone.device
        pix, tok, glob = [], [], []
        with torch.no_grad():
            for lo in tqdm(range(0, len(self.paths), batch_size), desc="predicir: encode targets", unit="batch",
                           disable=not progress):
                p = backbone.preprocess_batch(self.paths[lo:lo + batch_size]).to(dev)
                pix.append(p.half().cpu())
                tok.append(backbone.forward_image_tokens(p).half().cpu())
                glob.append(backbone.forward_images(p).float().cpu())
        self.pixels, self.target_tokens, self.target_global = torch.cat(pix), torch.cat(tok), torch.cat(glob)
        k = max(len(c) for c in self.captions)
        flat = [c[j % len(c)] for c in self.captions for j in range(k)]
        self.caption_features = backbone.encode_texts(flat, progress=progress).view(len(self.paths), k, -1)
        self.null_action = backbone.encode_texts([""])[0]

    def __len__(self) -> int:
        return len(self.paths)


class PrediCIRTrainer:
    def __init__(self, backbone: Backbone, data: WorldViewData, cfg: PrediCIRTrainConfig) -> None:
        self.backbone, self.data, self.cfg = backbone, data, cfg
        self.prompts = get_templates(cfg.prompts)
        torch.manual_seed(cfg.seed)
        self.model: PrediCIRModel = new_model(backbone, cfg.width, cfg.depth, cfg.heads, cfg.fuse_hidden
                                              ).to(backbone.device)
        self._image_tokens: dict[str, torch.Tensor] | None = None

    def draw(self, idx: torch.Tensor, gen: torch.Generator
             ) -> tuple[list[CropBox], list[int], list[bool], list[bool]]:
        """Random crop boxes, caption choices, whether the caption goes into the prompt, whether the action is dropped."""
        boxes = [sample_crop(self.data.grid, self.cfg.views, gen) for _ in idx]
        k = self.data.caption_features.shape[1]
        choice = torch.randint(0, k, (len(idx),), generator=gen).tolist()
        in_prompt = (torch.rand(len(idx), generator=gen) < self.cfg.caption_in_prompt).tolist()
        dropped = (torch.rand(len(idx), generator=gen) < self.cfg.action_dropout).tolist()
        return boxes, choice, in_prompt, dropped

    def prompt_tokens(self, idx: torch.Tensor, choice: list[int], in_prompt: list[bool]) -> dict[str, torch.Tensor]:
        """The tokenised training prompts: ``"... $ that {caption}"`` where ``in_prompt``, else the image prompt.
        A batch of image prompts only (the default, ``caption_in_prompt=0``) reuses one tokenisation."""
        bb, d = self.backbone, self.data
        if not any(in_prompt):
            if self._image_tokens is None:
                self._image_tokens = bb.tokenize([self.prompts.image_prompt(bb.placeholder)])
            return {k: v.repeat(len(idx), *([1] * (v.dim() - 1))) for k, v in self._image_tokens.items()}
        texts = []
        for i, j, use in zip(idx.tolist(), choice, in_prompt):
            cap = d.captions[i][j % len(d.captions[i])]
            texts.append(self.prompts.query_prompt(cap, bb.placeholder) if use
                         else self.prompts.image_prompt(bb.placeholder))
        return bb.tokenize(texts)

    def losses(self, idx: torch.Tensor, boxes: list[CropBox], choice: list[int], in_prompt: list[bool],
               dropped: list[bool] | None = None) -> dict[str, torch.Tensor]:
        d, bb, dev = self.data, self.backbone, self.backbone.device
        pixels = d.pixels[idx].float().to(dev)
        views = source_views(pixels, boxes, d.patch, self.cfg.views.fill)
        with torch.no_grad():
            src_tokens, src_global = (x.float() for x in bb.forward_image_tokens_and_features(views))
        visible = visible_masks(boxes, d.grid).to(dev)
        action = d.caption_features[idx, torch.tensor(choice)]
        if dropped is not None and any(dropped):
            action = torch.where(torch.tensor(dropped)[:, None], d.null_action[None], action)
        action = action.to(dev)
        pred, pseudo = self.model(src_tokens, visible, action, src_global)
        target = F.layer_norm(d.target_tokens[idx].float().to(dev), (d.width,))
        per_patch = F.smooth_l1_loss(pred, target, reduction="none").mean(-1)
        weight = torch.where(visible, torch.full_like(per_patch, self.cfg.visible_weight), torch.ones_like(per_patch))
        prediction = (per_patch * weight).sum() / weight.sum()
        tokens = {k: v.to(dev) for k, v in self.prompt_tokens(idx, choice, in_prompt).items()}
        txt = bb.forward_texts_pseudo(tokens, pseudo)
        tgt = F.normalize(d.target_global[idx].to(dev), dim=-1)
        logits = txt @ tgt.T / self.cfg.temperature
        gt = torch.arange(len(idx), device=dev)
        align = (F.cross_entropy(logits, gt) + F.cross_entropy(logits.T, gt)) / 2
        return {"loss": prediction + self.cfg.lambda_align * align, "prediction": prediction, "alignment": align}

    def fit(self, progress: bool = True) -> list[dict[str, Any]]:
        cfg = self.cfg
        params = list(self.model.parameters())
        opt = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        log: list[dict[str, Any]] = []
        sums: dict[str, float] = {}
        last, t0 = 0, time.time()
        self.model.train()
        bar = tqdm(range(cfg.steps), desc="train predicir", unit="step", disable=not progress)
        estimate = RunEstimate("train predicir", cfg.steps, shorten="--steps N for fewer", enabled=progress)
        with frozen(self.backbone):
            for step in estimate.wrap(bar):
                idx = torch.randperm(len(self.data), generator=gen)[:cfg.batch_size]
                out = self.losses(idx, *self.draw(idx, gen))
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v.item()
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    n = step + 1 - last
                    entry = {"step": step + 1, **{k: round(v / n, 5) for k, v in sums.items()},
                             "seconds": round(time.time() - t0, 1)}
                    log.append(entry)
                    sums, last = {}, step + 1
                    bar.set_postfix(loss=f"{entry['loss']:.4f}")
        self.model.eval()
        return log

    def checkpoint(self, log: list[dict[str, Any]], seconds: float) -> PrediCIRCheckpoint:
        training = {"config": self.cfg.to_dict(), "data": self.data.source, "images": len(self.data), "log": log,
                    "seconds": round(seconds, 1)}
        return PrediCIRCheckpoint(self.model.cpu().eval(), self.prompts, self.backbone.spec,
                                  self.backbone.fingerprint(), self.data.patch, training)


def train_predicir(backbone: Backbone, data: str | Path | WorldViewData, cfg: PrediCIRTrainConfig,
                   out: str | Path | None = None, progress: bool = True) -> PrediCIRCheckpoint:
    """Train PrediCIR on a dataset's captioned gallery; with ``out`` save the checkpoint (``predicir:OUT``)."""
    t0 = time.time()
    if not isinstance(data, WorldViewData):
        data = WorldViewData(data, backbone, cfg.max_images, cfg.seed, progress=progress)
    trainer = PrediCIRTrainer(backbone, data, cfg)
    log = trainer.fit(progress)
    ck = trainer.checkpoint(log, time.time() - t0)
    if out is not None:
        ck.save(out)
    return ck


QUICK = {"steps": 30, "batch_size": 32, "max_images": 256, "depth": 1, "fuse_hidden": 128}


@ZEROSHOT_TRAINERS.register("predicir", help="PrediCIR world model + pseudo word, trained on train/ images+captions")
def zeroshot_predicir(ctx: ZeroShotContext) -> str:
    overrides = dict(QUICK) if ctx.quick else {}
    overrides.update(ctx.options.get("predicir", {}))
    cfg = PrediCIRTrainConfig(seed=ctx.seed, **overrides)
    train_predicir(ctx.backbone, ctx.world / "train", cfg, ctx.out, progress=ctx.progress)
    return f"predicir:{ctx.out}"


__all__ = ["PrediCIRTrainConfig", "PrediCIRTrainer", "WorldViewData", "train_predicir", "zeroshot_predicir"]
