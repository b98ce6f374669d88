"""Two-stage supervised training of the Combiner from cached features (DAIG's recipe).

Stage 1, ``pretrain``: contrastive training on synthetic triplets, optionally with
DRSP (``drsp`` = perturbation strength on the visual features). Stage 2,
``finetune``: contrastive training on the real triplets, starting from stage 1's
weights, optionally with FRA (``margin`` = angular margin in radians). Either stage
may be skipped (``epochs = 0``; no synthetic data).

Each stage keeps its own checkpoint under ``OUT/stages/<stage>/`` (weights, AdamW
state and ``state.json``) written after every epoch, so an interrupted run resumes
at the next epoch; data order, dropout and DRSP noise are seeded per (seed, stage,
epoch), so a resumed run gives the same weights as an uninterrupted one. Every epoch
appends a line to ``OUT/metrics.jsonl`` (loss, temperature, seconds and, given
validation features, recall). The final model is ``OUT/model.safetensors`` +
``OUT/config.json``: the method ``combiner:OUT``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import CirlabError
from ..methods.combiner import Combiner, CombinerCheckpoint, CombinerConfig
from .drsp import DRSP
from .features import EvalFeatures, FeatureTriplets, evaluate_features
from .losses import contrastive_loss

log = logging.getLogger(__name__)
STAGES = ("pretrain", "finetune")
STAGE_SALT = {"pretrain": 101, "finetune": 202}


@dataclass
class StageConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    drsp: float = 0.0          # DRSP strength on the visual features (0: off)
    margin: float = 0.0        # FRA angular margin phi in radians (0: plain contrastive loss)

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 2 or self.lr <= 0:
            raise CirlabError(f"stage config: epochs >= 0, batch_size >= 2 and lr > 0 needed, got {self}")
        if self.drsp < 0 or not 0 <= self.margin < 3.14159:
            raise CirlabError(f"stage config: drsp >= 0 and 0 <= margin < pi needed, got {self}")


@dataclass
class SupervisedConfig:
    combiner: CombinerConfig
    pretrain: StageConfig = field(default_factory=lambda: StageConfig(epochs=0))
    finetune: StageConfig = field(default_factory=StageConfig)
    seed: int = 0
    backbone: str = ""
    fingerprint: str = ""
    eval_every: int = 1        # epochs between validation runs (0: never)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- one stage ------------------------------------------------------------------------------

def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> dict[str, Any]:
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, st in sd["state"].items() for k, v in st.items()
               if isinstance(v, torch.Tensor)}
    save_file(tensors, str(path.with_name(path.name + ".tmp")))
    os.replace(path.with_name(path.name + ".tmp"), path)
    return {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, path: Path, groups: dict[str, Any]) -> None:
    tensors = load_file(str(path))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        i, _, name = key.partition(".")
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups["param_groups"]})


def _save_model(model: Combiner, path: Path) -> None:
    save_file({k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()},
              str(path.with_name(path.name + ".tmp")))
    os.replace(path.with_name(path.name + ".tmp"), path)


def _append(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def train_stage(model: Combiner, data: FeatureTriplets, cfg: StageConfig, stage: str, stage_dir: Path,
                metrics_log: Path, seed: int = 0, val: EvalFeatures | None = None, eval_every: int = 1,
                progress: bool = True) -> list[dict[str, Any]]:
    """Train ``model`` in place for one stage; resumes from ``stage_dir`` when it holds a checkpoint of this stage."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    state_p, weights_p, optim_p = stage_dir / "state.json", stage_dir / "model.safetensors", stage_dir / "optim.safetensors"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    drsp = DRSP(cfg.drsp)
    cfg_dict = {**asdict(cfg), "samples": len(data), "seed": seed}
    start, history = 0, []
    if state_p.is_file():
        state = json.loads(state_p.read_text())
        if state.get("config") != cfg_dict:
            raise CirlabError(f"{state_p}: holds a {stage!r} run with other settings ({state.get('config')}) than "
                              f"this one ({cfg_dict}); use another --out or delete {stage_dir}")
        model.load_state_dict(load_file(str(weights_p)))
        _load_optimizer(opt, optim_p, state["optimizer"])
        start, history = state["epoch"], state["history"]
        if start < cfg.epochs:
            log.info("%s: resuming at epoch %d of %d", stage, start + 1, cfg.epochs)
    n, bs = len(data), min(cfg.batch_size, len(data))
    bar = tqdm(range(start, cfg.epochs), desc=stage, unit="epoch", disable=not progress, initial=start,
               total=cfg.epochs)
    for epoch in bar:
        t0 = time.time()
        model.train()
        drsp.train()
        torch.manual_seed(seed * 100003 + STAGE_SALT[stage] * 1009 + epoch)
        gen = torch.Generator().manual_seed(seed * 7919 + STAGE_SALT[stage] * 31 + epoch)
        order = torch.randperm(n, generator=gen)
        losses = []
        # drop a last batch smaller than half a batch (a 1- or 2-sample batch has no negatives to speak of)
        for lo in range(0, n, bs):
            rows = order[lo:lo + bs]
            if len(rows) < max(2, bs // 2) and lo > 0:
                continue
            ref = drsp(data.reference[rows], gen)
            tgt = drsp(data.target[rows], gen)
            q = model(ref, data.text[rows])
            loss = contrastive_loss(q, torch.nn.functional.normalize(tgt, dim=-1), model.scale(), cfg.margin,
                                    data.target_ids[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        row: dict[str, Any] = {"stage": stage, "epoch": epoch + 1, "loss": round(sum(losses) / len(losses), 5),
                               "temperature": round(1.0 / model.scale().item(), 5), "steps": len(losses)}
        if val is not None and eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == cfg.epochs):
            model.eval()
            m = evaluate_features(model, val)["all"]
            row.update({f"val_{k}": round(v, 2) for k, v in m.items() if k.startswith("recall@")})
        row["seconds"] = round(time.time() - t0, 3)
        history.append(row)
        _append(metrics_log, row)
        bar.set_postfix(loss=row["loss"])
        _save_model(model, weights_p)
        groups = _save_optimizer(opt, optim_p)
        tmp = state_p.with_name("state.json.tmp")
        tmp.write_text(json.dumps({"stage": stage, "epoch": epoch + 1, "config": cfg_dict, "optimizer": groups,
                                   "history": history}))
        os.replace(tmp, state_p)
    model.eval()
    return history


# ---- both stages ----------------------------------------------------------------------------

def train_supervised(cfg: SupervisedConfig, real: FeatureTriplets, out: str | os.PathLike[str],
                     synthetic: FeatureTriplets | None = None, val: EvalFeatures | None = None,
                     progress: bool = True) -> CombinerCheckpoint:
    """Pre-train on ``synthetic`` (if given and ``cfg.pretrain.epochs > 0``), fine-tune on ``real``, save to ``out``."""
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    model = Combiner(cfg.combiner)
    metrics_log = out_p / "metrics.jsonl"
    training: dict[str, Any] = {"config": cfg.to_dict(), "stages": {}}
    plan = []
    if synthetic is not None and cfg.pretrain.epochs > 0:
        plan.append(("pretrain", cfg.pretrain, synthetic))
    if cfg.finetune.epochs > 0:
        plan.append(("finetune", cfg.finetune, real))
    if not plan:
        raise CirlabError("nothing to train: both stages have 0 epochs (or no synthetic data for pre-training)")
    for stage, scfg, data in plan:
        hist = train_stage(model, data, scfg, stage, out_p / "stages" / stage, metrics_log, cfg.seed, val,
                           cfg.eval_every, progress)
        training["stages"][stage] = {"samples": len(data), "epochs": scfg.epochs, "final": hist[-1] if hist else {}}
    training["seconds"] = round(time.time() - t0, 2)
    training["log"] = str(metrics_log)
    ck = CombinerCheckpoint(model.eval(), cfg.backbone, cfg.fingerprint, training)
    ck.save(out_p)
    return ck


__all__ = ["STAGES", "StageConfig", "SupervisedConfig", "train_stage", "train_supervised"]
