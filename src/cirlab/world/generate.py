"""Generate the built-in world: rendered galleries and triplets for train / val / test splits.

Each split is a dataset directory in the cirlab format (``gallery.jsonl``,
``triplets.jsonl``, ``images/``). The world is a pure function of its config:
the same seed gives byte-identical files.

Hardness: for every query the split's gallery also holds the reference,
``distractors`` scenes one attribute away from the target, and
``reference_distractors`` other single edits of the reference (as close to the
reference as the target is, so the image alone cannot single the target out); underspecified queries
(CIRCO-style) list every valid target present in the gallery. Some (colour, shape)
combinations are held out of the train split entirely; test queries whose target
contains one are marked ``meta.heldout``.

Texts: every query is worded in the three registers of ``phrasing`` (``meta.texts``); its
caption is the one of ``meta.register``, drawn with ``registers`` weights. Images: the splits are
drawn through the world's camera (``effects``, see ``scene.Effects``), which no generator
``Style`` reproduces. A config written before registers and effects existed (format 1) reads as
``registers = {"procedural": 1}`` and no effects, and gives the same queries and texts as then; one
written before ``describing`` existed reads as ``describing = "partial"`` (format 2 as first
written: describing texts name the change and sometimes one other object); one written before
``drift`` existed reads as ``drift = 0`` (every target is exactly the reference with the edit applied);
one written before ``brief`` existed reads as ``brief = 0`` (every describing text at ``describing`` detail).

Brief describing texts: annotators differ in how much of the target they name. With ``brief`` a share
of the queries gets describing texts at ``partial`` detail (the change and sometimes one other object)
whatever ``describing`` says; ``meta.detail`` records which.

Drift: real targets are other photos, not the reference retouched; with ``drift`` each object an edit
leaves alone also changes size or place in the edited scene, unmentioned (``edits.drift``; the changes
are in ``meta.silent``). It applies to the target and to the reference's other edits alike, so it does
not mark the target out; it makes the reference image a weaker cue, as on CIRR.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from ..data.jsonl import write_jsonl
from ..fileutil import FIXED_MTIME_NS, LOCK_NAME, DirLock, atomic_write_text, seal
from ..errors import CirlabError
from .edits import EDIT_KINDS, SINGLE_EDITS, EditResult, drift, make_edit, one_attribute_away
from .phrasing import BENCHMARK_REGISTER_SHARES, DETAILS, REGISTERS, phrase
from .scene import DEFAULT_STYLE, NO_EFFECTS, REAL_EFFECTS, Effects, Scene, Style, caption, random_scene, render

SPLITS = ("train", "val", "test")
SINGLE_KINDS = tuple(SINGLE_EDITS)
SPLIT_SALT = {"train": 1, "val": 2, "test": 3}
WORLD_FORMAT = 2  # 2: registers and camera effects
#: what a config written before a field existed meant by it (old worlds stay readable)
LEGACY = {"registers": {"procedural": 1.0}, "effects": NO_EFFECTS.to_dict(), "describing": "partial", "drift": 0.0,
          "brief": 0.0}
MIN_RESOLUTION = 8
#: written when a split starts, removed when its dataset.json lands: an interrupted split resumes only
#: with the settings it was started with
IN_PROGRESS = ".generating.json"
LOCK_WAIT_S = 3600.0


@dataclass
class WorldConfig:
    seed: int = 0
    resolution: int = 64
    queries: dict[str, int] = field(default_factory=lambda: {"train": 6000, "val": 500, "test": 2000})
    distractors: int = 2                 # scenes one attribute away from each target
    reference_distractors: int = 2       # other single edits of each reference (as close to it as the target)
    extra_gallery: dict[str, int] = field(default_factory=lambda: {"train": 3000, "val": 200, "test": 500})
    underspecified: float = 0.3          # fraction of add/move queries with several valid targets
    max_alternatives: int = 3            # other valid targets put in the gallery for those
    heldout: list[tuple[str, str]] = field(default_factory=lambda: [("yellow", "triangle"), ("blue", "star"),
                                                                      ("green", "diamond")])
    kind_weights: dict[str, float] = field(default_factory=lambda: {
        "add": 1, "remove": 1, "colour": 1, "shape": 1, "size": 1, "move": 1, "two edits": 1.5})
    captions_per_image: int = 3
    #: register weights; default: their shares in the real benchmarks' texts (``BENCHMARK_REGISTER_SHARES``)
    registers: dict[str, float] = field(default_factory=lambda: dict(BENCHMARK_REGISTER_SHARES))
    effects: dict[str, float] = field(default_factory=REAL_EFFECTS.to_dict)
    describing: str = "placed"           # what describing texts name besides the change (phrasing.DETAILS)
    drift: float = 1.0                   # chance that each object an edit leaves alone changes size or place
    brief: float = 0.2                   # share of describing texts worded at ``partial`` detail whatever ``describing``

    @property
    def camera(self) -> Effects:
        return Effects(**self.effects)

    def __post_init__(self) -> None:
        if not isinstance(self.registers, dict) or any(r not in REGISTERS for r in self.registers) or \
                not any(isinstance(w, (int, float)) and w > 0 for w in self.registers.values()):
            raise CirlabError(f"world config: registers {self.registers!r}: weights of {', '.join(REGISTERS)}, "
                              f"at least one positive")
        if isinstance(self.drift, bool) or not isinstance(self.drift, (int, float)) or not 0 <= self.drift <= 1:
            raise CirlabError(f"world config: drift must be a number from 0 to 1, got {self.drift!r}")
        if isinstance(self.brief, bool) or not isinstance(self.brief, (int, float)) or not 0 <= self.brief <= 1:
            raise CirlabError(f"world config: brief must be a number from 0 to 1, got {self.brief!r}")
        if self.describing not in DETAILS:
            raise CirlabError(f"world config: describing {self.describing!r}: one of {', '.join(DETAILS)}")
        if not isinstance(self.effects, dict) or set(self.effects) - set(Effects.__dataclass_fields__):
            raise CirlabError(f"world config: effects {self.effects!r}: known effects are "
                              f"{', '.join(Effects.__dataclass_fields__)}")
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < MIN_RESOLUTION:
            raise CirlabError(f"world config: resolution must be an integer of at least {MIN_RESOLUTION} pixels, "
                              f"got {self.resolution!r}")
        bad = {s: n for s, n in self.queries.items() if isinstance(n, bool) or not isinstance(n, int) or n < 0}
        if bad or not any(self.queries.values()):
            raise CirlabError(f"world config: queries must be non-negative integers, at least one positive; "
                              f"got {self.queries}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["heldout"] = [list(x) for x in self.heldout]
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "WorldConfig":
        if not isinstance(d, dict):
            raise CirlabError(f"world config: expected a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(WorldConfig)})
        if unknown:
            raise CirlabError(f"world config: unknown field(s) {unknown}")
        d = {**LEGACY, **d}
        try:
            d["heldout"] = [tuple(x) for x in d.get("heldout", [])]
        except TypeError:
            raise CirlabError(f"world config: 'heldout' must be a list of [colour, shape] pairs") from None
        return WorldConfig(**d)

    def small(self, queries: int = 120) -> "WorldConfig":
        """A miniature of this config (tests, quick runs)."""
        return WorldConfig(seed=self.seed, resolution=self.resolution,
                           queries={"train": queries * 2, "val": queries // 2, "test": queries},
                           distractors=self.distractors, reference_distractors=self.reference_distractors,
                           extra_gallery={"train": queries, "val": queries // 4, "test": queries // 4},
                           underspecified=self.underspecified, max_alternatives=self.max_alternatives,
                           heldout=list(self.heldout), kind_weights=dict(self.kind_weights),
                           captions_per_image=self.captions_per_image, registers=dict(self.registers),
                           effects=dict(self.effects), describing=self.describing, drift=self.drift, brief=self.brief)


class _GalleryBuilder:
    """Deduplicates scenes: equal scenes share one image id."""

    def __init__(self, split: str) -> None:
        self.split = split
        self.by_key: dict[str, str] = {}
        self.scenes: dict[str, Scene] = {}

    def add(self, scene: Scene) -> str:
        key = scene.key
        if key not in self.by_key:
            image_id = f"{self.split}-{len(self.by_key):06d}"
            self.by_key[key] = image_id
            self.scenes[image_id] = scene
        return self.by_key[key]

    def find(self, scene: Scene) -> str | None:
        return self.by_key.get(scene.key)


def _sample_kind(rng: random.Random, weights: dict[str, float]) -> str:
    kinds = [k for k in EDIT_KINDS if weights.get(k, 0) > 0]
    return rng.choices(kinds, [weights[k] for k in kinds])[0]


def generate_split(cfg: WorldConfig, split: str) -> tuple[dict[str, Scene], list[dict[str, Any]]]:
    """Scenes by image id, and triplet rows, for one split (no files written)."""
    rng = random.Random(cfg.seed * 1000 + SPLIT_SALT[split])
    heldout = frozenset(tuple(x) for x in cfg.heldout)
    banned = heldout if split == "train" else frozenset()
    gal = _GalleryBuilder(split)
    rows: list[dict[str, Any]] = []
    queries: list[tuple[str, EditResult, str]] = []
    n = cfg.queries[split]
    while len(queries) < n:
        ref = random_scene(rng, banned=banned)
        kind = _sample_kind(rng, cfg.kind_weights)
        under = kind in ("add", "move") and rng.random() < cfg.underspecified
        res = make_edit(ref, kind, rng, banned, under)
        if res is None:
            continue
        res = drift(ref, res, rng, cfg.drift)
        ref_id = gal.add(ref)
        gal.add(res.target)
        for alt in res.alternatives[: cfg.max_alternatives]:
            gal.add(alt)
        for _ in range(cfg.distractors):
            gal.add(one_attribute_away(res.target, rng, banned))
        for _ in range(cfg.reference_distractors):
            other = make_edit(ref, rng.choice(SINGLE_KINDS), rng, banned)
            if other is not None:
                gal.add(drift(ref, other, rng, cfg.drift).target)
        queries.append((ref_id, res, kind))
    for _ in range(cfg.extra_gallery.get(split, 0)):
        gal.add(random_scene(rng, banned=banned))
    registers = [r for r in REGISTERS if cfg.registers.get(r, 0) > 0]
    for qn, (ref_id, res, kind) in enumerate(queries):
        valid = [gal.find(s) for s in [res.target] + res.alternatives]
        targets = [t for t in valid if t is not None]
        meta: dict[str, Any] = {
            "kind": kind,
            "ops": res.ops,
            "underspecified": res.underspecified,
            "heldout": bool(res.target.combos() & heldout),
        }
        if res.silent:
            meta["silent"] = res.silent
        text = res.text
        if registers != ["procedural"]:  # a separate random stream: the scenes do not depend on the wording
            prng = random.Random(hash_seed(cfg.seed * 1000 + SPLIT_SALT[split], f"q{qn}"))
            register = prng.choices(registers, [cfg.registers[r] for r in registers])[0]
            ref = gal.scenes[ref_id]
            # no draw at brief 0: worlds written before the field give the same texts
            detail = "partial" if cfg.brief > 0 and prng.random() < cfg.brief else cfg.describing
            words = {r: phrase(ref, res.target, res.ops, res.text, r, prng, human=True,
                               underspecified=res.underspecified, detail=detail) for r in REGISTERS}
            text = words[register].text
            meta.update({"register": register, "texts": {r: w.text for r, w in words.items()}, "detail": detail,
                         "phrasing": list(words[register].templates), "human_only": words[register].human_only})
        rows.append({"id": f"{split}-q{qn:05d}", "reference": ref_id, "caption": text, "targets": targets,
                     "meta": meta})
    return gal.scenes, rows


def write_split(cfg: WorldConfig, split: str, out: Path, style: Style = DEFAULT_STYLE, progress: bool = True) -> Path:
    """Render and write one split under ``out/split``; returns the split directory."""
    root = Path(out) / split
    img_dir = root / "images"
    settings = _settings(cfg)
    claim_split(root, settings)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / IN_PROGRESS).is_file():
        atomic_write_text(root / IN_PROGRESS, json.dumps(settings))
    img_dir.mkdir(parents=True, exist_ok=True)
    scenes, rows = generate_split(cfg, split)
    cap_rng = random.Random(cfg.seed * 7919 + SPLIT_SALT[split])
    gallery_rows = []
    camera = cfg.camera
    for image_id, scene in tqdm(scenes.items(), desc=f"render {split}", unit="img", disable=not progress):
        path = img_dir / f"{image_id}.png"
        if not path.exists():
            tmp = path.with_name(path.stem + ".tmp.png")
            render(scene, cfg.resolution, style, random.Random(hash_seed(cfg.seed, image_id)), effects=camera,
                   effects_rng=random.Random(hash_seed(cfg.seed + 7777, image_id))).save(tmp, compress_level=1)
            os.replace(tmp, path)
        caps = [caption(scene, cap_rng) for _ in range(cfg.captions_per_image)]
        gallery_rows.append({"id": image_id, "path": f"images/{image_id}.png", "caption": caption(scene),
                             "meta": {"objects": scene.to_list(), "captions": caps}})
    write_jsonl(root / "gallery.jsonl", gallery_rows)
    write_jsonl(root / "triplets.jsonl", rows)
    info = {"name": f"world-{split}", "world_format": WORLD_FORMAT, "split": split, "config": cfg.to_dict(),
            "style": style.to_dict(), "images": len(scenes), "queries": len(rows),
            "files": seal(root, ["gallery.jsonl", "triplets.jsonl", *(r["path"] for r in gallery_rows)],
                          pin_ns=FIXED_MTIME_NS)}
    atomic_write_text(root / "dataset.json", json.dumps(info, indent=2))
    (root / IN_PROGRESS).unlink(missing_ok=True)
    return root


def _settings(cfg: WorldConfig) -> dict[str, Any]:
    return {"config": json.loads(json.dumps(cfg.to_dict())), "world_format": WORLD_FORMAT}


def _describe(config: dict[str, Any]) -> str:
    return f"seed {config.get('seed')}, resolution {config.get('resolution')}, queries {config.get('queries')}"


def claim_split(root: Path, settings: dict[str, Any]) -> None:
    """Refuse to write a split into a directory that holds something else: a world made with other
    settings (complete or interrupted) or files that are not a world split. Mixing old images with new
    listings is never done, and nothing is deleted."""
    if not root.exists():
        return
    if not root.is_dir():
        raise CirlabError(f"{root}: exists and is not a directory")
    for name, what in (("dataset.json", "a world"), (IN_PROGRESS, "an interrupted world")):
        p = root / name
        if not p.is_file():
            continue
        try:
            have = json.loads(p.read_text())
        except (OSError, ValueError):
            have = {}
        have = {"config": have.get("config"), "world_format": have.get("world_format")}
        if have != settings:
            raise CirlabError(f"{root}: holds {what} generated with other settings ({_describe(have['config'] or {})}; "
                              f"asked for {_describe(settings['config'])}); give another --out, or delete "
                              f"{root} to regenerate it")
        return
    others = sorted(p.name for p in root.iterdir() if p.name != LOCK_NAME)
    if others:
        raise CirlabError(f"{root}: exists and is not a world split (it holds {', '.join(others[:5])}); give a new "
                          f"or empty --out")


def hash_seed(seed: int, image_id: str) -> int:
    h = seed
    for ch in image_id:
        h = (h * 131 + ord(ch)) % (2**31 - 1)
    return h


def generate_world(out: str | os.PathLike[str], cfg: WorldConfig | None = None, splits: tuple[str, ...] = SPLITS,
                   progress: bool = True) -> dict[str, Path]:
    """Generate (or reuse) the world under ``out``; a split whose files match ``cfg`` is kept."""
    cfg = cfg or WorldConfig()
    out_p = Path(out)
    done: dict[str, Path] = {}
    for split in splits:
        root = out_p / split
        if not is_complete(root, cfg):
            claim_split(root, _settings(cfg))  # refused before anything is created
            with DirLock(root, "generated", wait=LOCK_WAIT_S):  # a concurrent run of the same world: wait for it
                if not is_complete(root, cfg):
                    write_split(cfg, split, out_p, progress=progress)
        done[split] = root
    return done


def is_complete(root: Path, cfg: WorldConfig) -> bool:
    info = root / "dataset.json"
    if not info.is_file() or not (root / "triplets.jsonl").is_file() or not (root / "gallery.jsonl").is_file():
        return False
    try:
        meta = json.loads(info.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and {"config": meta.get("config"), "world_format": meta.get("world_format")} \
        == _settings(cfg)


def iter_scenes(root: Path) -> Iterator[tuple[str, Scene]]:
    with open(root / "gallery.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            yield row["id"], Scene.from_list(row["meta"]["objects"])
