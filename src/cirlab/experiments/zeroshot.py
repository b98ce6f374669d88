"""The zero-shot experiment: train Pic2Word, SEARLE and LinCIR on the world, compare zero-shot.

Each method trains on the world's *train* gallery (images or captions; never its triplets),
then every method and the baselines are evaluated on the *test* split with
``evaluate_methods``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import CirlabError
from . import md_row as _row

BASELINES = ("image", "text", "sum")
TRAINED = ("pic2word", "searle", "lincir")
OVERALL = ("recall@1", "recall@5", "recall@10", "recall@50", "map@10")


@dataclass
class ZeroShotConfig:
    out: Path
    world: Path | None = None          # world root (train/ + test/); generated into OUT/world when missing
    small: int | None = None           # generate a miniature world with N test queries
    backbone: str = "tiny:world"
    prompts: str = "world"
    steps: int = 500
    batch_size: int = 256
    max_images: int = 8192
    oti_images: int = 1024
    oti_steps: int = 100
    query_oti_steps: int = 50
    seed: int = 0


def ensure_world(world: Path, seed: int, small: int | None, splits: Sequence[str] = ("train", "test"),
                 progress: bool = True, given: bool = False) -> Path:
    """The world root ``world`` with ``splits``, generated from ``seed`` when one is missing.

    ``given``: the user named ``world``; an existing directory without the splits is then an error
    (never generate into someone else's directory)."""
    from ..world import WorldConfig, generate_world

    if not all((world / s).is_dir() for s in splits):
        if given and world.exists():
            raise CirlabError(f"--world {world}: needs {' and '.join(s + '/' for s in splits)} sub-directories")
        cfg = WorldConfig(seed=seed)
        generate_world(world, cfg.small(small) if small else cfg, tuple(splits), progress=progress)
    if not (world / "test" / "triplets.jsonl").is_file():
        raise CirlabError(f"{world}/test: no triplets.jsonl; --world must be a world root with train/ and test/")
    return world


def train_textual_inversion(cfg: ZeroShotConfig, backbone: Any, world: Path, out: Path
                            ) -> tuple[list[str], dict[str, Any]]:
    """Train Pic2Word, SEARLE and LinCIR on ``world/train`` into ``out/NAME``: (method specs, training logs)."""
    from ..methods.textual_inversion.oti import OTIConfig
    from ..train.textual_inversion import MethodTrainConfig, TrainingData, train_method

    data = TrainingData(world / "train", cfg.max_images)
    training: dict[str, Any] = {}
    specs = []
    for name in TRAINED:
        mcfg = MethodTrainConfig(method=name, steps=cfg.steps, batch_size=cfg.batch_size, prompts=cfg.prompts,
                                 oti_images=cfg.oti_images, oti=OTIConfig(steps=cfg.oti_steps, seed=cfg.seed),
                                 seed=cfg.seed)
        ck = train_method(backbone, data, mcfg, out / name)
        training[name] = {k: v for k, v in ck.training.items() if k != "config"}
        specs.append(f"{name}:{out / name}")
    return specs, training


def run_zeroshot(cfg: ZeroShotConfig, command: str = "") -> dict[str, Any]:
    from ..backbones import create_backbone
    from ..data import load_dataset
    from ..eval.evaluate import evaluate_methods

    world = ensure_world(cfg.world or cfg.out / "world", cfg.seed, cfg.small)
    backbone = create_backbone(cfg.backbone)
    trained, training = train_textual_inversion(cfg, backbone, world, cfg.out)
    specs = list(BASELINES) + trained
    if cfg.query_oti_steps:
        specs.append(f"searle-oti:{cfg.query_oti_steps}")
    test = load_dataset(world / "test")
    results = evaluate_methods(test, backbone, specs, cfg.out / "index")
    return {"command": command, "backbone": backbone.spec, "world": str(world),
            "train_split": str(world / "train"), "test_split": str(world / "test"),
            "training": training, "results": [r.to_json() for r in results]}


def _short(spec: str) -> str:
    name, _, arg = spec.partition(":")
    return spec if name in ("searle-oti", "weighted") else name


def markdown(payload: dict[str, Any]) -> str:
    res = payload["results"]
    kinds = sorted({k for r in res for k in r["per_kind"]}, key=lambda k: (k == "heldout", k))
    out = [f"Backbone `{payload['backbone']}`, world test split `{payload['test_split']}` "
           f"({res[0]['config']['queries']} queries, gallery {res[0]['config']['gallery']}); reference removed "
           f"from rankings; metrics in percent.", "", f"Command: `{payload['command']}`", "",
           _row(["method", *OVERALL]), _row(["---"] * (len(OVERALL) + 1))]
    out += [_row([_short(r["method"]), *(f"{r['metrics'][c]:.2f}" for c in OVERALL)]) for r in res]
    for metric in ("recall@1", "recall@10"):
        out += ["", f"{metric} per edit kind:", "", _row(["method", *kinds]), _row(["---"] * (len(kinds) + 1))]
        out += [_row([_short(r["method"]), *(f"{r['per_kind'][k][metric]:.2f}" if k in r["per_kind"] else ""
                                              for k in kinds)]) for r in res]
    queries = res[0]["per_kind"]
    out += ["", "Queries per kind: " + ", ".join(f"{k} {queries[k].get('queries', '')}" for k in kinds), ""]
    return "\n".join(out)


__all__ = ["BASELINES", "OVERALL", "TRAINED", "ZeroShotConfig", "ensure_world", "markdown", "run_zeroshot",
           "train_textual_inversion"]
