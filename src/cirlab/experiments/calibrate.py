"""Calibration: does the world order the baselines and the textual-inversion methods as the benchmarks do?

Trains Pic2Word, SEARLE and LinCIR on ``world/train`` (images or captions, never triplets),
evaluates them with the baselines on ``world/val`` and ``world/test``, and prints them beside
the published ordering (CIRR test, CLIP ViT-L/14, R@1: image-only 7.4, text-only 20.9,
Pic2Word 23.9, SEARLE-XL 24.2, LinCIR 25.0; FashionIQ and CIRCO order them the same way).

The one choice the experiment makes, the text weight of ``weighted:W``, is made on val
(highest R@10) and only then applied to test. The checks (R@10; each on val and on test):

- ``text > image on describing queries``: on target-describing (FashionIQ-like) queries the
  text alone beats the reference image alone;
- ``M > image`` and ``M > sum`` for M in pic2word, searle, lincir, over all queries;
- ``text > image overall`` (as on CIRR), and ``sum > text`` / ``sum > image`` overall (as on FashionIQ
  and CIRCO; on CIRR text-only beats the sum), reported but not required.

The world counts as calibrated when the required checks hold on test.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import md_row
from .zeroshot import TRAINED, ZeroShotConfig, ensure_world, train_textual_inversion

PUBLISHED_CIRR_R1 = {"image": 7.4, "text": 20.9, "pic2word": 23.9, "searle": 24.2, "lincir": 25.0}
REGISTER_OF_DEFAULT = "procedural"  # queries of worlds written before registers existed


@dataclass
class CalibrateConfig(ZeroShotConfig):
    weights: Sequence[float] = field(default_factory=lambda: (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8))
    metric: str = "recall@10"


def _register(t: Any) -> str:
    return str(t.meta.get("register", REGISTER_OF_DEFAULT))


def _evaluate(ds: Any, backbone: Any, specs: list[str], index_dir: Path, progress: bool) -> dict[str, Any]:
    from ..eval.evaluate import evaluate_methods
    from ..eval.metrics import grouped_metrics

    out: dict[str, Any] = {}
    trips = [t for t in ds.triplets if t.targets]
    for r in evaluate_methods(ds, backbone, specs, index_dir, progress=progress):
        groups = grouped_metrics([r.rankings[t.id] for t in trips], [t.targets for t in trips],
                                 [_register(t) for t in trips], recall_ks=(1, 5, 10, 50), map_ks=(10,))
        out[r.method] = {"metrics": r.metrics, "registers": {g: v for g, v in groups.items() if g != "all"},
                         "per_kind": r.per_kind}
    return out


def _name(spec: str) -> str:
    name = spec.split(":", 1)[0]
    return spec if name == "weighted" else name


def checks(split: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """The expected orderings, each with both sides' values and whether it holds."""
    res = {_name(k): v for k, v in split.items()}

    def value(method: str, register: str | None = None) -> float | None:
        r = res.get(method)
        if r is None:
            return None
        m = r["registers"].get(register) if register else r["metrics"]
        return None if m is None else float(m[metric])

    out = []

    def check(name: str, a: str, b: str, register: str | None, required: bool) -> None:
        va, vb = value(a, register), value(b, register)
        if va is None or vb is None:
            return
        out.append({"check": name, "left": round(va, 2), "right": round(vb, 2), "holds": va > vb,
                    "required": required})

    check("text > image on describing queries", "text", "image", "describing", True)
    for m in TRAINED:
        check(f"{m} > image", m, "image", None, True)
        check(f"{m} > sum", m, "sum", None, True)
    check("text > image overall", "text", "image", None, False)
    check("sum > text overall", "sum", "text", None, False)
    check("sum > image overall", "sum", "image", None, False)
    return out


def run_calibrate(cfg: CalibrateConfig, command: str = "", progress: bool = True) -> dict[str, Any]:
    from ..backbones import create_backbone
    from ..data import load_dataset

    world = ensure_world(cfg.world or cfg.out / "world", cfg.seed, cfg.small, ("train", "val", "test"),
                         progress=progress)
    backbone = create_backbone(cfg.backbone)
    trained, training = train_textual_inversion(cfg, backbone, world, cfg.out)
    val = load_dataset(world / "val")
    weighted = [f"weighted:{w:g}" for w in cfg.weights]
    val_res = _evaluate(val, backbone, ["image", "text", "sum", *weighted, *trained], cfg.out / "index-val", progress)
    best = max(weighted, key=lambda s: val_res[s]["metrics"][cfg.metric])
    val_res = {k: v for k, v in val_res.items() if k not in weighted or k == best}
    test = load_dataset(world / "test")
    test_res = _evaluate(test, backbone, ["image", "text", "sum", best, *trained], cfg.out / "index-test", progress)
    val_checks, test_checks = checks(val_res, cfg.metric), checks(test_res, cfg.metric)
    calibrated = all(c["holds"] for c in test_checks if c["required"])
    registers = sorted({_register(t) for t in test.triplets if t.targets})
    return {"command": command, "backbone": backbone.spec, "world": str(world), "metric": cfg.metric,
            "chosen_on_val": {"weighted": best}, "training": training, "registers": registers,
            "queries": {"val": len([t for t in val.triplets if t.targets]),
                        "test": len([t for t in test.triplets if t.targets])},
            "val": val_res, "test": test_res, "checks": {"val": val_checks, "test": test_checks},
            "calibrated": calibrated, "published_cirr_r1": PUBLISHED_CIRR_R1}


def markdown(payload: dict[str, Any]) -> str:
    metric = payload["metric"]
    regs = payload["registers"]
    out = [f"Backbone `{payload['backbone']}`, world `{payload['world']}` (val {payload['queries']['val']} / test "
           f"{payload['queries']['test']} queries); reference removed from rankings; metrics in percent. "
           f"Chosen on val: `{payload['chosen_on_val']['weighted']}`.", "", f"Command: `{payload['command']}`", "",
           md_row(["method", "val R@1", f"val {metric}", "test R@1", f"test {metric}",
                   *(f"test {metric} {r}" for r in regs), "published CIRR R@1"]),
           md_row(["---"] * (6 + len(regs)))]
    for spec, r in payload["test"].items():
        v = payload["val"].get(spec, {}).get("metrics", {})
        t = r["metrics"]
        pub = payload["published_cirr_r1"].get(_name(spec))
        out.append(md_row([_name(spec), f"{v.get('recall@1', float('nan')):.2f}", f"{v.get(metric, float('nan')):.2f}",
                           f"{t['recall@1']:.2f}", f"{t[metric]:.2f}",
                           *(f"{r['registers'][g][metric]:.2f}" if g in r["registers"] else "" for g in regs),
                           f"{pub}" if pub is not None else "—"]))
    out += ["", f"Expected orderings ({metric}; required ones decide calibration):", "",
            md_row(["check", "val", "test", "required"]), md_row(["---"] * 4)]
    for cv, ct in zip(payload["checks"]["val"], payload["checks"]["test"]):
        cell = lambda c: f"{'holds' if c['holds'] else 'FAILS'} ({c['left']:.2f} vs {c['right']:.2f})"  # noqa: E731
        out.append(md_row([ct["check"], cell(cv), cell(ct), "yes" if ct["required"] else "no"]))
    out += ["", f"Calibrated on test: **{'yes' if payload['calibrated'] else 'no'}**.", ""]
    return "\n".join(out)


__all__ = ["CalibrateConfig", "PUBLISHED_CIRR_R1", "checks", "markdown", "run_calibrate"]
