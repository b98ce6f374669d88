"""The DAIG experiment in the built-in world (``cirlab experiment daig``): the pipeline that trains.

Real data = the world's train split (style ``REAL``); evaluation = its test split.
Synthetic data = template-scripted text triplets rendered by the world generator,
either unadapted (style ``UNADAPTED``: the domain gap) or adapted to the 32 real
triplets' images by ``fit_style`` (the world's CIR-LoRA). For every seed, a few-shot
real set is drawn and these Combiners are trained from cached features and
evaluated on the test split:

==========================  =====================================================
``32-shot``                 fine-tune on the 32 real triplets only
``+ syn (unadapted)``       pre-train on unadapted synthetic triplets, fine-tune
``+ syn (adapted)``         pre-train on adapted synthetic triplets, fine-tune
``+ DRSP``                  ... pre-training with DRSP
``+ FRA``                   ... and fine-tuning with FRA (= full DAIG)
``adapted syn only``        pre-training only (no real triplet seen)
``1 %`` / ``100 %``         Combiner alone vs full DAIG with that share of real data
==========================  =====================================================
"""
from __future__ import annotations

import json
import logging
import random
import shlex
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..backbones.base import Backbone
from ..data import load_dataset
from ..data.record import CIRDataset
from ..methods.combiner import CombinerConfig
from ..synth.scripting import TemplateScripter
from ..synth.world import UNADAPTED, WorldGenerator, fit_style, frechet_diagonal
from ..train.features import EvalFeatures, FeatureTriplets, evaluate_features, triplet_features
from ..train.supervised import StageConfig, SupervisedConfig, train_supervised
from ..world import WorldConfig, generate_world
from . import mean_std

log = logging.getLogger(__name__)
METRICS = ("recall@1", "recall@5", "recall@10", "recall@50", "map@10")


@dataclass
class DaigConfig:
    world_seed: int = 0
    world_queries: int | None = None   # None: the full world; N: WorldConfig().small(N)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    shots: int = 32
    fractions: list[float] = field(default_factory=lambda: [0.01, 1.0])
    synthetic: int = 3000              # synthetic text triplets per generator
    combiner: dict[str, Any] = field(default_factory=lambda: {"projection": 512, "hidden": 1024, "dropout": 0.2})
    pretrain: StageConfig = field(default_factory=lambda: StageConfig(epochs=10, batch_size=128, lr=1e-3))
    finetune: StageConfig = field(default_factory=lambda: StageConfig(epochs=30, batch_size=32, lr=5e-4))
    full_finetune: StageConfig = field(default_factory=lambda: StageConfig(epochs=20, batch_size=128, lr=1e-3))
    drsp: float = 1.0
    margin: float = 0.1
    fit_images: int = 64               # real images (of the few-shot triplets) the style is fitted to

    @staticmethod
    def quick() -> "DaigConfig":
        return DaigConfig(world_queries=100, seeds=[0, 1], synthetic=300,
                          pretrain=StageConfig(epochs=8, batch_size=64, lr=1e-3),
                          finetune=StageConfig(epochs=30, batch_size=32, lr=5e-4),
                          full_finetune=StageConfig(epochs=20, batch_size=64, lr=1e-3))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ROWS = ("image only", "sum", "{shots}-shot Combiner", "+ synthetic pre-training (unadapted generator)",
        "+ synthetic pre-training (adapted generator)", "+ DRSP", "+ FRA (full DAIG)",
        "adapted synthetic only (no real triplets)")


def _shots_rows(trips: list, k: int, seed: int) -> list:
    return random.Random(seed * 7907 + k).sample(trips, min(k, len(trips)))


def run_daig(cfg: DaigConfig, out: str | Path, backbone: Backbone, command: str = "", progress: bool = True
             ) -> dict[str, Any]:
    t_start = time.time()
    out = Path(out)
    world_cfg = WorldConfig(seed=cfg.world_seed)
    if cfg.world_queries:
        world_cfg = world_cfg.small(cfg.world_queries)
    splits = generate_world(out / "world", world_cfg, ("train", "test"), progress=progress)
    train, test = load_dataset(splits["train"]), load_dataset(splits["test"])
    cache = out / "features"
    ev = _eval_features(backbone, test, cache, progress)
    real_trips = [t for t in train.triplets if t.targets]
    res: dict[str, Any] = {"command": command, "backbone": backbone.spec, "config": cfg.to_dict(),
                           "world": {"config": world_cfg.to_dict(), "train_triplets": len(real_trips),
                                     "test_queries": len(ev), "test_gallery": len(ev.gallery_ids)},
                           "runs": {}, "domain_gap": {}, "styles": {}}

    def record(row: str, seed: int | None, metrics: dict[str, float], extra: dict[str, Any] | None = None) -> None:
        res["runs"].setdefault(row, []).append({"seed": seed, **{k: round(metrics[k], 2) for k in METRICS},
                                                **(extra or {})})

    # baselines (no training)
    for name, fn in (("image only", lambda i, x: i), ("sum", lambda i, x: i + x)):
        record(name, None, evaluate_features(fn, ev)["all"])

    # synthetic text triplets (shared) and the unadapted generator's data
    texts = TemplateScripter(seed=cfg.world_seed + 17).script(cfg.synthetic)
    unadapted = _synthetic(backbone, WorldGenerator(UNADAPTED, world_cfg.resolution, 0), texts,
                           out / "synthetic" / "unadapted", cache, progress)
    all_real = triplet_features(backbone, train, cache, real_trips, progress)
    real_img = all_real.reference[:2000]
    res["domain_gap"]["unadapted"] = round(frechet_diagonal(real_img, unadapted.reference), 4)
    index_of = {t.id: n for n, t in enumerate(real_trips)}
    base = CombinerConfig(dim=backbone.embed_dim, **cfg.combiner)
    ft, pt = cfg.finetune, cfg.pretrain

    def train_eval(name: str, seed: int, real: FeatureTriplets, syn: FeatureTriplets | None,
                   pre: StageConfig, fine: StageConfig) -> dict[str, float]:
        sub = out / "runs" / f"seed{seed}" / name.replace(" ", "-").replace("%", "pct")
        sc = SupervisedConfig(base, pretrain=pre, finetune=fine, seed=seed, backbone=backbone.spec, eval_every=0)
        ck = train_supervised(sc, real, sub, syn, progress=False)
        return evaluate_features(ck.model, ev)["all"]

    for seed in cfg.seeds:
        shots = _shots_rows(real_trips, cfg.shots, seed)
        few = all_real.subset([index_of[t.id] for t in shots])
        # the world's CIR-LoRA: fit the generator's style to the few-shot triplets' real images
        img_ids = list(dict.fromkeys([t.reference for t in shots] + [t.targets[0] for t in shots]))[:cfg.fit_images]
        pos = {g: n for n, g in enumerate(train.gallery.ids)}
        fit = fit_style([Image.open(train.gallery.paths[pos[i]]) for i in img_ids],
                        [train.gallery.captions[pos[i]] or "" for i in img_ids], UNADAPTED, seed=seed)
        res["styles"][f"seed{seed}"] = fit.report
        adapted = _synthetic(backbone, WorldGenerator(fit.style, world_cfg.resolution, seed + 1), texts,
                             out / "synthetic" / f"adapted-seed{seed}", cache, progress)
        res["domain_gap"][f"adapted-seed{seed}"] = round(frechet_diagonal(real_img, adapted.reference), 4)
        k = f"{cfg.shots}-shot"
        no_pre = replace(pt, epochs=0)
        drsp_pre = replace(pt, drsp=cfg.drsp)
        fra_ft = replace(ft, margin=cfg.margin)
        record(f"{k} Combiner", seed, train_eval("fewshot", seed, few, None, no_pre, ft))
        record(ROWS[3], seed, train_eval("fewshot-unadapted", seed, few, unadapted, pt, ft))
        record(ROWS[4], seed, train_eval("fewshot-adapted", seed, few, adapted, pt, ft))
        record(ROWS[5], seed, train_eval("fewshot-drsp", seed, few, adapted, drsp_pre, ft))
        record(ROWS[6], seed, train_eval("fewshot-daig", seed, few, adapted, drsp_pre, fra_ft))
        record(ROWS[7], seed, _synthetic_only(base, adapted, drsp_pre, seed, out, ev, backbone))
        for frac in cfg.fractions:
            n = max(cfg.shots // 4, int(round(frac * len(real_trips))))
            rows = _shots_rows(list(range(len(real_trips))), n, seed + 1000) if n < len(real_trips) else list(
                range(len(real_trips)))
            real = all_real.subset(rows)
            fine = cfg.full_finetune if n > 4 * cfg.shots else ft
            label = f"{frac * 100:g} % real ({n} triplets)"
            record(f"{label}: Combiner", seed, train_eval(f"frac{frac}", seed, real, None, no_pre, fine))
            record(f"{label}: DAIG", seed, train_eval(f"frac{frac}-daig", seed, real, adapted, drsp_pre,
                                                     replace(fine, margin=cfg.margin)))
    res["summary"] = summarise(res["runs"])
    res["seconds"] = round(time.time() - t_start, 1)
    return res


def _synthetic_only(base: CombinerConfig, syn: FeatureTriplets, pre: StageConfig, seed: int, out: Path,
                    ev: EvalFeatures, backbone: Backbone) -> dict[str, float]:
    """Train on synthetic triplets only (the pre-training stage as the only stage)."""
    sc = SupervisedConfig(base, finetune=pre, seed=seed, backbone=backbone.spec, eval_every=0)
    ck = train_supervised(sc, syn, out / "runs" / f"seed{seed}" / "synthetic-only", progress=False)
    return evaluate_features(ck.model, ev)["all"]


def _eval_features(backbone: Backbone, test: CIRDataset, cache: Path, progress: bool) -> EvalFeatures:
    from ..train.features import eval_features

    return eval_features(backbone, test, cache, progress)


def _synthetic(backbone: Backbone, gen: WorldGenerator, texts: Sequence, directory: Path, cache: Path,
               progress: bool) -> FeatureTriplets:
    info = directory / "dataset.json"
    want = {"style": gen.style.to_dict(), "queries": len(texts), "seed": gen.seed}
    have = json.loads(info.read_text()) if info.is_file() else {}
    if {k: have.get(k) for k in want} != json.loads(json.dumps(want)):
        gen.generate(texts, directory, progress)
    ds = load_dataset(directory)
    return triplet_features(backbone, ds, cache, progress=progress)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for row, items in runs.items():
        s: dict[str, Any] = {"setting": row, "seeds": len(items)}
        for m in METRICS:
            mean, std = mean_std([r[m] for r in items])
            s[m] = [round(mean, 2), round(std, 2)]
        out.append(s)
    return out


def markdown(res: dict[str, Any]) -> str:
    w = res["world"]
    lines = [f"Backbone `{res['backbone']}` (frozen), world test split: {w['test_queries']} queries, gallery "
             f"{w['test_gallery']}; real train split {w['train_triplets']} triplets; metrics in percent, "
             f"mean ± std over seeds {res['config']['seeds']} (reference removed from rankings).", "",
             f"Command: `{res['command']}` ({res['seconds']:.0f} s)", "",
             "| setting | seeds | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for s in res["summary"]:
        cells = [f"{s[m][0]:.2f} ± {s[m][1]:.2f}" if s["seeds"] > 1 else f"{s[m][0]:.2f}" for m in METRICS]
        lines.append(f"| {s['setting']} | {s['seeds']} | " + " | ".join(cells) + " |")
    lines += ["", "Domain gap (Fréchet distance of diagonal Gaussians, backbone image features of real train "
              "references vs synthetic references; lower = closer): "
              + ", ".join(f"{k} {v}" for k, v in res["domain_gap"].items()), ""]
    lines += ["Fitted generator styles (the world's CIR-LoRA; the real style is background (236, 236, 236), no shift, "
              "jitter 0, scale 1, noise 0, blur 0):", ""]
    for seed, rep in res["styles"].items():
        f = rep["fitted"]
        lines.append(f"- {seed}: background {tuple(f['background'])}, colour shift {tuple(f['colour_shift'])}, "
                     f"jitter {f['jitter']}, scale {f['scale']}, noise {f['noise']}, blur {f['blur']} "
                     f"(histogram distance {rep['histogram_distance_before']} -> {rep['histogram_distance_after']})")
    return "\n".join(lines) + "\n"


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(["cirlab", "experiment", "daig", *argv])


__all__ = ["DaigConfig", "METRICS", "markdown", "run_daig", "summarise"]
