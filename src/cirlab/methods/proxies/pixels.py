"""Pixel proxy generators (``PROXY_GENERATORS``, kind ``"pixels"``): they imagine the target as an image.

- ``diffusers:DIR``: a diffusers text-to-image pipeline (``DiffusionPipeline.from_pretrained(DIR)``,
  e.g. Stable Diffusion, or CIG's generator after ``cirlab train cig``). The prompt is the target
  description when the method provides one (``batch.extra["target_captions"]``, IP-CIR's captioner +
  rewriter), else the composed prompt "{reference description} that {text}" when the method provides
  reference descriptions (CIG with a captioner), else the modification text. Sampling is seeded.
- ``world-render:TRAIN_DIR``: **an oracle** (upper bound) world analog of a captioner + LLM + text-to-image
  model: the reference is described by the nearest caption of ``TRAIN_DIR``'s gallery (``world``
  captioner), the edit is applied by the world's own grammar (``world`` rewriter) and the target
  description is drawn by the synth package's ``WorldGenerator`` renderer. The non-oracle analog is
  ``t2i`` (``proxies.t2i``). Options: ``,style=real|unadapted`` (the world's own style, default, or the
  DAIG issue's unadapted generator style with its domain gap), ``,max_captions=N``,
  ``,captioner=SPEC`` (another captioner, e.g. ``oracle:TEST_DIR`` for an upper-bound analysis).
"""
from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from ...backbones.base import Backbone
from ...errors import CirlabError
from ..base import QueryBatch
from ..generators import PROXY_GENERATORS
from .captioners import Captioner, NearestCaptionCaptioner
from .rewriters import Rewriter, WorldRuleRewriter, parse_options

TARGET_CAPTIONS = "target_captions"      # batch.extra key: target descriptions a method already made
REFERENCE_CAPTIONS = "reference_captions"


def imagine_captions(batch: QueryBatch, captioner: Captioner, rewriter: Rewriter) -> tuple[list[str], list[str]]:
    """(reference descriptions, target descriptions), cached in ``batch.extra`` so a batch is described once."""
    if REFERENCE_CAPTIONS not in batch.extra:
        batch.extra[REFERENCE_CAPTIONS] = captioner.caption(batch)
    if TARGET_CAPTIONS not in batch.extra:
        batch.extra[TARGET_CAPTIONS] = rewriter.rewrite(batch.extra[REFERENCE_CAPTIONS], list(batch.texts))
    return batch.extra[REFERENCE_CAPTIONS], batch.extra[TARGET_CAPTIONS]


def composed_prompt(reference: str, text: str) -> str:
    """The prompt CIG's generator is fine-tuned on and queried with."""
    return f"{reference.strip()} that {text.strip()}"


class WorldRenderGenerator:
    """World analog of a pixel generator: caption (analog) -> rewrite (analog) -> render the description."""

    kind = "pixels"
    needs_pixels = False

    def __init__(self, captioner: Captioner, rewriter: Rewriter | None = None, style: str = "real",
                 resolution: int = 64) -> None:
        from ...synth.world import REAL, UNADAPTED, WorldGenerator

        styles = {"real": REAL, "unadapted": UNADAPTED}
        if style not in styles:
            raise CirlabError(f"world-render: style={style!r}; use one of {', '.join(styles)}")
        self.captioner, self.rewriter = captioner, rewriter or WorldRuleRewriter()
        self.style = style
        self.renderer = WorldGenerator(styles[style], resolution)
        self.unrenderable = 0

    def render_description(self, text: str, key: str) -> Image.Image:
        from ...synth.world import parse_description

        try:
            scene = parse_description(text)
        except ValueError:
            self.unrenderable += 1
            return Image.new("RGB", (self.renderer.resolution,) * 2, self.renderer.style.background)
        return self.renderer.render(scene, key)

    def generate(self, batch: QueryBatch, seed: int = 0) -> list[Image.Image]:
        _, targets = imagine_captions(batch, self.captioner, self.rewriter)
        self.renderer.seed = seed
        return [self.render_description(t, f"{n}:{t}") for n, t in enumerate(targets)]

    def config(self) -> dict[str, Any]:
        return {"name": "world-render", "analog": True,
                "oracle": "draws the imagined target with the world's own renderer (the one that drew the gallery)",
                "captioner": self.captioner.config(),
                "rewriter": self.rewriter.config(), "style": self.style, "resolution": self.renderer.resolution}


@PROXY_GENERATORS.register("world-render", help="ORACLE WORLD ANALOG of captioner + LLM + text-to-image (upper "
                                                "bound): nearest train caption, the world's edit grammar, the "
                                                "gallery's renderer; world-render:TRAIN_DIR[,style=real|unadapted]")
def _world_render(arg: str, backbone: Backbone) -> WorldRenderGenerator:
    from .captioners import create_captioner

    src, opts = parse_options(arg, {"style": str, "max_captions": int, "resolution": int, "captioner": str},
                              "world-render")
    if not src:
        raise CirlabError("world-render: give the caption bank (the world's train split), "
                          "e.g. world-render:/data/world/train")
    other, max_captions = opts.pop("captioner", None), opts.pop("max_captions", 0)
    cap = create_captioner(other, backbone) if other else NearestCaptionCaptioner(backbone, src, max_captions)
    return WorldRenderGenerator(cap, WorldRuleRewriter(), **opts)


class DiffusersGenerator:
    """A diffusers text-to-image pipeline as a proxy generator (one image per query).

    With ``phi`` (a pseudo-word mapping from the backbone's image features to the pipeline text encoder's
    token space, as CIG's generator uses LinCIR's), the pipeline is not prompted with text: the query
    template ``template`` ("a photo of $ that {caption}") is encoded by the pipeline's own text encoder with
    the placeholder's token embedding replaced by ``phi(reference feature)``, and those hidden states are
    passed as ``prompt_embeds``.
    """

    kind = "pixels"
    needs_pixels = False

    def __init__(self, pipeline: Any, steps: int = 20, guidance: float = 7.5, size: int | None = None,
                 source: str = "", batch_size: int = 16, phi: Any = None, phi_source: str = "",
                 template: str = "a photo of $ that {caption}") -> None:
        self.pipeline, self.steps, self.guidance, self.size, self.source = pipeline, steps, guidance, size, source
        self.batch_size = batch_size
        self.phi, self.phi_source, self.template = phi, phi_source, template
        #: the pseudo-token phi takes raw reference features (the official LinCIR phi does)
        self.needs_raw = bool(phi is not None and phi.cfg.raw_input)
        self._injector = None
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)
        if phi is not None:
            self._setup_pseudo()

    def _setup_pseudo(self) -> None:
        from ...backbones.inject import TokenInjector, pick_placeholder

        pipe = self.pipeline
        emb = pipe.text_encoder.get_input_embeddings()
        if self.phi.cfg.out_dim != emb.weight.shape[1]:
            raise CirlabError(f"diffusers generator: phi {self.phi_source} maps to {self.phi.cfg.out_dim}-d tokens but "
                              f"the pipeline's text encoder embeds tokens in {emb.weight.shape[1]} dimensions")
        if "{caption}" not in self.template or "$" not in self.template:
            raise CirlabError(f"diffusers generator: template {self.template!r} needs '$' and '{{caption}}'")
        self.placeholder, self.placeholder_id = pick_placeholder(pipe.tokenizer, ("$", "*", "@", "§"))
        if self.placeholder_id is None:
            raise CirlabError("diffusers generator: the pipeline's tokenizer has no single-token placeholder "
                              "among $ * @ §")
        self._injector = TokenInjector(emb)

    @torch.no_grad()
    def prompt_embeds(self, batch: QueryBatch) -> torch.Tensor:
        """(N, L, width) hidden states of the query template with the pseudo token of each reference."""
        pipe = self.pipeline
        texts = [self.template.replace("$", self.placeholder).format(caption=t) for t in batch.texts]
        ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        p0 = next(self.phi.parameters())
        feats = batch.raw_reference_features if self.needs_raw else batch.reference_features
        pseudo = self.phi(feats.to(device=p0.device, dtype=p0.dtype))
        te = pipe.text_encoder
        with self._injector.active(ids == self.placeholder_id, pseudo):
            return te(ids.to(te.device))[0]

    @classmethod
    def load(cls, directory: str, **kw: Any) -> DiffusersGenerator:
        from pathlib import Path

        from diffusers import DiffusionPipeline

        if not Path(directory).is_dir():
            raise CirlabError(f"diffusers generator: {directory}: no such pipeline directory "
                              f"(a diffusers save_pretrained folder with model_index.json)")
        try:
            pipe = DiffusionPipeline.from_pretrained(directory)
        except (OSError, ValueError) as e:
            raise CirlabError(f"diffusers generator: cannot load {directory}: {e}") from None
        return cls(pipe, source=directory, **kw)

    def prompts(self, batch: QueryBatch) -> list[str]:
        """Target descriptions when given; else composed prompts "{reference description} that {text}" when
        reference descriptions are given (CIG's fine-tuned generator, ``cirlab train cig``); else the texts."""
        if batch.extra.get(TARGET_CAPTIONS):
            return list(batch.extra[TARGET_CAPTIONS])
        if batch.extra.get(REFERENCE_CAPTIONS):
            return [composed_prompt(r, t) for r, t in zip(batch.extra[REFERENCE_CAPTIONS], batch.texts)]
        return list(batch.texts)

    @torch.no_grad()
    def generate(self, batch: QueryBatch, seed: int = 0) -> list[Image.Image]:
        kw: dict[str, Any] = {"num_inference_steps": self.steps, "guidance_scale": self.guidance,
                              "generator": torch.Generator().manual_seed(seed), "output_type": "pil"}
        if self.size:
            kw["height"] = kw["width"] = self.size
        if self.phi is not None:
            embeds = self.prompt_embeds(batch)
            chunks = [{"prompt_embeds": embeds[lo:lo + self.batch_size]} for lo in range(0, len(batch), self.batch_size)]
        else:
            prompts = self.prompts(batch)
            chunks = [{"prompt": prompts[lo:lo + self.batch_size]} for lo in range(0, len(prompts), self.batch_size)]
        out: list[Image.Image] = []
        for chunk in chunks:   # one generator: the chunks continue its stream
            out += list(self.pipeline(**chunk, **kw).images)
        return out

    def config(self) -> dict[str, Any]:
        out = {"name": "diffusers", "pipeline": self.source, "steps": self.steps, "guidance": self.guidance,
               "size": self.size}
        if self.phi is not None:
            out.update({"phi": self.phi_source, "template": self.template})
        return out


@PROXY_GENERATORS.register("diffusers", help="a diffusers text-to-image pipeline directory; "
                                             "diffusers:DIR[,steps=N,guidance=G,size=S,batch_size=B,phi=CKPT]: "
                                             "phi prompts it with pseudo-token embeddings (CIG)")
def _diffusers(arg: str, backbone: Backbone) -> DiffusersGenerator:
    src, opts = parse_options(arg, {"steps": int, "guidance": float, "size": int, "batch_size": int, "phi": str},
                              "diffusers generator")
    if not src:
        raise CirlabError("diffusers generator: give a pipeline directory, e.g. diffusers:/models/sd-cig")
    if opts.get("phi"):
        opts["phi_source"] = opts["phi"]
        opts["phi"] = load_phi(opts["phi"])
    return DiffusersGenerator.load(src, **opts)


def load_phi(directory: str) -> Any:
    """The phi of any pseudo-word checkpoint directory (searle, lincir, pic2word), whatever backbone it names."""
    import json
    from pathlib import Path

    from ..textual_inversion.phi import load_checkpoint

    cfg = Path(directory) / "config.json"
    if not cfg.is_file():
        raise CirlabError(f"diffusers generator: phi={directory}: no config.json (a pseudo-word checkpoint directory)")
    return load_checkpoint(directory, str(json.loads(cfg.read_text()).get("method", ""))).phi


__all__ = ["REFERENCE_CAPTIONS", "TARGET_CAPTIONS", "DiffusersGenerator", "WorldRenderGenerator", "composed_prompt", "imagine_captions"]
