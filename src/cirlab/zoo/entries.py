"""The zoo's entries: one data record per named pretrained configuration (as timm's pretrained configs).

An entry says everything needed to run a published model as its authors did: the method and its
config, the backbone (hub id), the weight files (where they come from, checksum where known, the
importer that converts them), the preprocessing, an inference preset per benchmark and the
published numbers with their source. Nothing here is code that runs a model; ``cirlab.zoo.resolve``
turns an entry into specs.

Published numbers come from the papers as recorded in the project's facts about the official
methods; a field is left empty where the source is not known.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..benchmarks.presets import PRESETS
from ..errors import CirlabError
from ..registry import Registry


@dataclass(frozen=True)
class WeightFile:
    """One file an entry needs. ``url``: a direct download (``cirlab zoo fetch``); otherwise ``source``
    says where a person gets it (a Drive folder, a hub page) and the file is placed by hand."""

    key: str                      # how the entry's specs refer to it: {key}
    name: str                     # the file name in the zoo cache
    url: str = ""                 # a direct HTTP(S) download, when there is one
    source: str = ""              # the page a person downloads it from when there is no direct URL
    sha256: str = ""              # checksum, where known
    importer: str = ""            # cirlab.zoo.importers name that converts it ("" = used as is)
    importer_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Published:
    """Numbers a paper reports for one benchmark split (metric names as cirlab reports them)."""

    benchmark: str
    split: str
    metrics: dict[str, float]
    source: str                   # the paper (and table, when recorded)


@dataclass(frozen=True)
class ZooEntry:
    name: str                     # "searle:vit-l14"
    method: str                   # method spec with {key} placeholders for converted files, e.g. "searle:{phi}"
    backbone: str                 # backbone spec, may refer to a converted file: "openclip:{clip}"
    paper: str
    weights: tuple[WeightFile, ...] = ()
    preprocessing: str = "clip"   # "clip" (the model's processor) or "targetpad:RATIO"
    method_config: dict[str, Any] = field(default_factory=dict)   # written to {config} for config-file methods
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # benchmark -> template / join / config
    published: tuple[Published, ...] = ()
    notes: str = ""

    def backbone_options(self) -> str:
        """The backbone spec options that select the entry's preprocessing (``,preprocess=targetpad,...``)."""
        kind, _, ratio = self.preprocessing.partition(":")
        if kind == "targetpad":
            return ",preprocess=targetpad" + (f",target_ratio={ratio}" if ratio else "")
        return ""

    def weight(self, key: str) -> WeightFile:
        for w in self.weights:
            if w.key == key:
                return w
        raise CirlabError(f"zoo entry {self.name!r}: no weight file {key!r}")

    def preset(self, benchmark: str) -> dict[str, Any]:
        if benchmark not in self.presets:
            raise CirlabError(f"zoo entry {self.name!r} has no inference preset for {benchmark!r} "
                              f"(it has: {', '.join(self.presets) or 'none'})")
        return self.presets[benchmark]

    def published_for(self, benchmark: str) -> list[Published]:
        return [p for p in self.published if p.benchmark == benchmark]


ZOO: Registry[ZooEntry] = Registry("zoo entry")


def register(entry: ZooEntry) -> ZooEntry:
    ZOO.register(entry.name, help=entry.paper)(lambda: entry)
    return entry


def get_entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise CirlabError(f"unknown zoo entry {name!r}; known: {', '.join(ZOO.names())} (see `cirlab zoo list`)")
    return ZOO.get(name)()


def entries() -> list[ZooEntry]:
    return [ZOO.get(n)() for n in ZOO.names()]


# ---- the entries --------------------------------------------------------------------------------------
HF_L14 = "hf:openai/clip-vit-large-patch14"
HF_B32 = "hf:openai/clip-vit-base-patch32"
SEARLE_PAPER = "Baldrati et al., Zero-Shot Composed Image Retrieval with Textual Inversion, ICCV 2023 (arXiv 2303.15247)"
PIC2WORD_PAPER = "Saito et al., Pic2Word, CVPR 2023 (arXiv 2302.03084)"
LINCIR_PAPER = "Gu et al., Language-only Efficient Training of Zero-shot Composed Image Retrieval, CVPR 2024 (arXiv 2312.01998)"
CLIP4CIR_PAPER = "Baldrati et al., CLIP4Cir (Combiner over fine-tuned RN50x4 CLIP)"
CIG_PAPER = "Wang et al., Generative Zero-Shot Composed Image Retrieval (CIG), CVPR 2025"
IPCIR_PAPER = "Li et al., Imagine and Seek (IP-CIR), CVPR 2025"
SEARLE_RELEASE = "https://github.com/miccunifi/SEARLE/releases/download/weights/"
CLIP4CIR_DRIVE = "https://drive.google.com/drive/folders/1ny2hhzP8HZBnXhjvDEni8P8G4_inCNTv"



def _presets(family: str) -> dict[str, dict[str, Any]]:
    """A method family's inference presets (``cirlab.benchmarks.presets``, the one place they live) as entry presets."""
    return {b: {"template": p.template, "join": p.join, **({"config": dict(p.config)} if p.config else {})}
            for b, p in PRESETS[family].items()}


# SEARLE/LinCIR inference: "a photo of $ that {caption}" on CIRR and CIRCO; Fashion IQ averages both
# caption orders, each caption stripped of '.?, '
SEARLE_PRESETS = _presets("searle")


def _searle(name: str, arch: str, backbone: str, published: tuple[Published, ...]) -> ZooEntry:
    file = f"SEARLE_{arch}.pt"
    return ZooEntry(name=name, method="searle:{phi}", backbone=backbone, paper=SEARLE_PAPER,
                    weights=(WeightFile("phi", file, url=SEARLE_RELEASE + file, source="torch.hub miccunifi/SEARLE",
                                        importer="searle"),),
                    preprocessing="targetpad:1.25", presets=SEARLE_PRESETS, published=published)


register(ZooEntry(
    name="pic2word:vit-l14", method="pic2word:{phi}", backbone=HF_L14, paper=PIC2WORD_PAPER,
    weights=(WeightFile("phi", "pic2word_model.pt",
                        source="https://drive.google.com/file/d/1IxRi2Cj81RxMu0ViT4q4nkfyjbSHm1dF",
                        importer="pic2word"),),
    presets=_presets("pic2word"),
    published=(Published("cirr", "test1", {"recall@1": 23.9, "recall@5": 51.7, "recall@10": 65.3,
                                            "recall@50": 87.8}, PIC2WORD_PAPER),
               Published("fashioniq", "val", {"average/recall@10": 24.7}, PIC2WORD_PAPER)),
    notes="Fashion IQ joins the captions reversed and unstripped; the reference is removed on CIRR only."))

register(_searle("searle:vit-b32", "ViT-B32", HF_B32,
                 (Published("cirr", "test1", {"recall@1": 24.00}, SEARLE_PAPER),)))
register(_searle("searle:vit-l14", "ViT-L14", HF_L14,
                 (Published("cirr", "test1", {"recall@1": 24.24}, SEARLE_PAPER + " (SEARLE-XL)"),
                  Published("circo", "test", {"map@5": 11.68}, SEARLE_PAPER + " (SEARLE-XL)"))))

register(ZooEntry(
    name="searle-oti:vit-l14", method="searle-oti:350", backbone=HF_L14, paper=SEARLE_PAPER,
    preprocessing="targetpad:1.25", presets=SEARLE_PRESETS,
    notes="Optimisation-based textual inversion at query time (350 steps); no weight file. Published "
          "SEARLE-XL-OTI numbers are not recorded here."))

register(ZooEntry(
    name="lincir:vit-l14", method="lincir:{phi}", backbone=HF_L14, paper=LINCIR_PAPER,
    weights=(WeightFile("phi", "lincir_large.pt",
                        url="https://huggingface.co/navervision/zeroshot-cir-models/resolve/main/lincir_large.pt",
                        source="https://huggingface.co/navervision/zeroshot-cir-models", importer="lincir"),),
    presets=_presets("lincir"),
    published=(Published("cirr", "test1", {"recall@1": 25.04}, LINCIR_PAPER),
               Published("circo", "test", {"map@5": 12.59}, LINCIR_PAPER)),
    notes="The CLIP processor (not TargetPad); phi on raw image features."))


def _clip4cir(dataset: str) -> ZooEntry:
    return ZooEntry(
        name=f"clip4cir:rn50x4-{dataset}", method="combiner:{combiner}", backbone="openclip:{clip}",
        paper=CLIP4CIR_PAPER,
        weights=(WeightFile("clip", f"{dataset}_clip_RN50x4_fullft.pt", source=CLIP4CIR_DRIVE, importer="clip4cir"),
                 WeightFile("combiner", f"{dataset}_comb_RN50x4_fullft.pt", source=CLIP4CIR_DRIVE,
                            importer="clip4cir", importer_args={"backbone": "{backbone}"})),
        preprocessing="targetpad:1.25",
        presets=_presets("clip4cir"),
        notes="Combiner on raw features, (text, image) order, logit scale 100. The Drive folder's file names "
              "are not recorded: place the two files under the names shown. Published numbers not recorded.")


register(_clip4cir("fashioniq"))
register(_clip4cir("cirr"))

register(ZooEntry(
    name="cig:vit-l14", method="cig:{config}", backbone=HF_L14, paper=CIG_PAPER,
    weights=(WeightFile("phi", "SEARLE_ViT-L14.pt", url=SEARLE_RELEASE + "SEARLE_ViT-L14.pt",
                        source="torch.hub miccunifi/SEARLE", importer="searle"),
             WeightFile("gen_phi", "lincir_large.pt",
                        url="https://huggingface.co/navervision/zeroshot-cir-models/resolve/main/lincir_large.pt",
                        source="https://huggingface.co/navervision/zeroshot-cir-models", importer="lincir"),
             WeightFile("generator", "cig-sdxl",
                        source="https://drive.google.com/drive/folders/1hpIpI0X26ox-uY-QdOPKDKKZlnWkftIA "
                               "(a diffusers pipeline directory)")),
    preprocessing="targetpad:1.25",
    method_config={"inversion": "searle:{phi}", "generator": "diffusers:{generator},phi={gen_phi},steps=50,size=512",
                   "weight": 0.5, "seed": 1600},
    presets=_presets("cig"),
    notes="Retrieval with SEARLE's phi; the fine-tuned SDXL pipeline imagines the target (512 px, 50 steps, "
          "seed 1600) from LinCIR pseudo-token prompt embeddings. cirlab's pseudo-token prompting encodes with "
          "the pipeline's one text encoder (SD-style); SDXL's second encoder and pooled embedding are not "
          "built, so this entry does not yet run the authors' SDXL pipeline. Fusion weight 0.5 on CIRR, 0.7 on "
          "CIRCO. Published numbers not recorded."))

register(ZooEntry(
    name="ip-cir:vit-l14", method="ip-cir:{config}", backbone=HF_L14, paper=IPCIR_PAPER,
    weights=(WeightFile("generator", "ip-cir-generator",
                        source="a diffusers pipeline directory (the authors use MIGC + ELITE layouts)"),),
    method_config={"generator": "diffusers:{generator}", "captioner": "hf:Salesforce/blip2-opt-2.7b",
                   "rewriter": "llm:http://127.0.0.1:8000/v1,temperature=1.0", "n_captions": 15,
                   "robust": "max-ratio", "lam": 0.35, "whole_gallery": True, "n_proxies": 5,
                   "proxy_weight": 1.0, "reference_weight": 1.0, "perturbation_weight": 1.0},
    presets=_presets("ip-cir"),
    published=(Published("cirr", "test1", {"recall@10": 70.07}, IPCIR_PAPER + ", abstract (backbone not stated)"),
               Published("fashioniq", "val", {"average/recall@10": 45.74},
                         IPCIR_PAPER + ", abstract (backbone not stated)"),
               Published("circo", "test", {"map@10": 34.26}, IPCIR_PAPER + ", abstract (backbone not stated)")),
    notes="The authors' CIRCO script: max-ratio robust feature, w = 0.65 for ViT-L/14 (lam = 1 - w), whole "
          "gallery, 5 proxies averaged, 15 edited captions averaged (the script weights them). The rewriter "
          "is an OpenAI-compatible LLM server on 127.0.0.1:8000 asked 15 times at temperature 1.0 (cirlab's "
          "choice); the authors edit 15 BLIP-2 captions with Qwen and generate proxies with MIGC + ELITE."))


__all__ = ["ZOO", "Published", "WeightFile", "ZooEntry", "entries", "get_entry", "register"]
