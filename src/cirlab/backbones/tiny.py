"""``tiny``: a small CLIP-style backbone (ViT + text transformer) that trains on a CPU.

Spec: ``tiny:world`` (the checkpoint shipped in ``cirlab/assets/tiny-world``: full scene captions,
mean-pooled text tower), ``tiny:alt`` (``cirlab/assets/tiny-alt``: the same image tower, locked, and a
CLIP text tower trained on the world's alt-text for 200 steps; see docs/world.md), ``tiny:alt-600``
(``cirlab/assets/tiny-alt-600``: the same recipe, 600 steps; the demo's backbone),
``tiny:<dir>`` (a directory with ``config.json`` + ``model.safetensors``), or
``tiny:random`` (random weights with the default config; for tests).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CirlabError
from . import BACKBONES
from .base import PLACEHOLDER, Backbone, finish, placeholder_mask

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", PLACEHOLDER]
TEXT_ENCODERS = ("mean", "clip")
_WORD = re.compile(r"[a-z0-9]+|\$|[^\sa-z0-9]")


class WordTokenizer:
    """Lower-case word-level tokenizer with a fixed vocabulary (unknown words -> ``[UNK]``)."""

    def __init__(self, vocab: Sequence[str], context: int) -> None:
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context = context
        self.pad, self.bos, self.eos, self.unk = (self.index[s] for s in SPECIALS[:4])
        self.placeholder_id = self.index[PLACEHOLDER]

    @staticmethod
    def words(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    @staticmethod
    def build_vocab(texts: Sequence[str], min_count: int = 1) -> list[str]:
        counts: dict[str, int] = {}
        for t in texts:
            for w in WordTokenizer.words(t):
                counts[w] = counts.get(w, 0) + 1
        words = sorted(w for w, c in counts.items() if c >= min_count and w not in SPECIALS)
        return SPECIALS + words

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = torch.full((len(texts), self.context), self.pad, dtype=torch.long)
        mask = torch.zeros((len(texts), self.context), dtype=torch.bool)
        for b, text in enumerate(texts):
            toks = [self.bos] + [self.index.get(w, self.unk) for w in self.words(text)][: self.context - 2] + [self.eos]
            ids[b, : len(toks)] = torch.tensor(toks)
            mask[b, : len(toks)] = True
        longest = max(1, int(mask.sum(1).max())) if len(texts) else 1
        return {"input_ids": ids[:, :longest], "attention_mask": mask[:, :longest]}


@dataclass
class TinyConfig:
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_depth: int = 4
    vision_heads: int = 4
    text_width: int = 128
    text_depth: int = 3
    text_heads: int = 4
    context: int = 48
    embed_dim: int = 128
    vocab: list[str] = field(default_factory=lambda: list(SPECIALS))
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    # text tower: "mean" pools every token without a mask (the first tiny checkpoints); "clip" is CLIP's
    # text encoder: causal attention and the end-of-text token's state as the text feature
    text_encoder: str = "mean"

    def __post_init__(self) -> None:
        if self.text_encoder not in TEXT_ENCODERS:
            raise CirlabError(f"tiny config: text_encoder {self.text_encoder!r}; known: {', '.join(TEXT_ENCODERS)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "TinyConfig":
        known = set(TinyConfig.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise CirlabError(f"unknown tiny config field(s): {sorted(unknown)}")
        return TinyConfig(**d)


def _blocks(width: int, depth: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class TinyVision(nn.Module):
    def __init__(self, c: TinyConfig) -> None:
        super().__init__()
        n = (c.image_size // c.patch_size) ** 2
        self.patch = nn.Conv2d(3, c.vision_width, c.patch_size, c.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, c.vision_width))
        self.pos = nn.Parameter(torch.randn(1, n + 1, c.vision_width) * 0.02)
        self.blocks = _blocks(c.vision_width, c.vision_depth, c.vision_heads)
        self.ln = nn.LayerNorm(c.vision_width)
        self.proj = nn.Linear(c.vision_width, c.embed_dim, bias=False)

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        return self.ln(self.blocks(x))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(self.tokens(pixels)[:, 0])


def _feed_forward(layer: nn.TransformerEncoderLayer, y: torch.Tensor) -> torch.Tensor:
    return y + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(y))))))


def _keys(layer: nn.TransformerEncoderLayer, prefix: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer-normed states of the rows' positions (``x``) and, in front, of their shared first positions."""
    h = layer.norm1(x)
    return h, torch.cat([layer.norm1(prefix).expand(len(x), -1, -1), h], 1) if prefix.shape[1] else h


def _causal_suffix(layer: nn.TransformerEncoderLayer, prefix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A norm-first ``layer``'s causal output at the positions ``x`` (B, n, W) that follow ``prefix`` (1, p, W),
    the first positions every row shares (their states are the same in every row, so they are kept once)."""
    p, n = prefix.shape[1], x.shape[1]
    h, kv = _keys(layer, prefix, x)
    hidden = torch.triu(torch.full((n, p + n), float("-inf"), device=x.device), diagonal=p + 1)
    att = layer.self_attn(h, kv, kv, attn_mask=hidden, need_weights=False)[0]
    return _feed_forward(layer, x + layer.dropout1(att))


def _end_of_text(layer: nn.TransformerEncoderLayer, prefix: torch.Tensor, x: torch.Tensor, eot: torch.Tensor
                 ) -> torch.Tensor:
    """(B, W): the last layer's causal output at each row's end-of-text position ``eot`` (in ``x``) only.

    The text feature reads nothing else from the last layer, so its other positions need no query, attention
    output or MLP: their keys and values are all it computes for them."""
    rows = torch.arange(len(x), device=x.device)
    h, kv = _keys(layer, prefix, x)
    later = torch.arange(kv.shape[1], device=x.device)[None, :] > (eot + prefix.shape[1])[:, None]
    att = layer.self_attn(h[rows, eot].unsqueeze(1), kv, kv, key_padding_mask=later, need_weights=False)[0]
    return _feed_forward(layer, x[rows, eot] + layer.dropout1(att[:, 0]))


def shared_prefix(ids: torch.Tensor, replaced: torch.Tensor | None = None) -> int:
    """How many first positions hold the same token in every row of ``ids`` (B, L) (and none ``replaced``)."""
    if len(ids) < 2:
        return 0
    same = (ids == ids[:1]).all(0)
    if replaced is not None:
        same &= ~replaced.any(0)
    return int(same.long().cumprod(0).sum())


class TinyText(nn.Module):
    def __init__(self, c: TinyConfig) -> None:
        super().__init__()
        self.clip = c.text_encoder == "clip"
        self.embed = nn.Embedding(len(c.vocab), c.text_width)
        self.pos = nn.Parameter(torch.randn(1, c.context, c.text_width) * 0.02)
        self.blocks = _blocks(c.text_width, c.text_depth, c.text_heads)
        self.ln = nn.LayerNorm(c.text_width)
        self.proj = nn.Linear(c.text_width, c.embed_dim, bias=False)

    def forward_embeds(self, x: torch.Tensor, mask: torch.Tensor, shared: int = 0) -> torch.Tensor:
        """Text features of the token embeddings ``x`` (B, L, W); with the CLIP tower, ``shared`` first positions
        that hold the same token in every row are computed once (a token sees only earlier ones, so their
        states are the same in every row)."""
        x = x + self.pos[:, : x.shape[1]]
        if self.clip:
            eot = mask.long().sum(1).clamp_min(1) - 1  # the end-of-text token is the last real one
            shared = max(0, min(shared, int(eot.min())))
            prefix, x = x[:1, :shared], x[:, shared:]
            causal = torch.triu(torch.full((shared or x.shape[1],) * 2, float("-inf"), device=x.device), diagonal=1)
            *early, last = self.blocks.layers
            for layer in early:  # padding after EOS is never seen
                if shared:
                    x = _causal_suffix(layer, prefix, x)
                    prefix = layer(prefix, src_mask=causal, is_causal=True)
                else:
                    x = layer(x, src_mask=causal, is_causal=True)
            return self.proj(self.ln(_end_of_text(last, prefix, x, eot - shared)))
        x = self.ln(self.blocks(x, src_key_padding_mask=~mask))
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1)
        return self.proj(pooled)


class TinyBackbone(Backbone):
    trailing_padding_free = True  # causal (clip) or key-padding-masked (mean) attention, masked pooling

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim
        self.token_dim = config.text_width
        self.tokenizer = WordTokenizer(config.vocab, config.context)
        self.visual = TinyVision(config)
        self.text = TinyText(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("mean", torch.tensor(config.mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(3, 1, 1), persistent=False)

    # preprocessing ---------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        s = self.config.image_size
        if image.size != (s, s):
            image = image.resize((s, s), Image.BILINEAR)
        arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (arr - self.mean.cpu()) / self.std.cpu()

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts)

    # forward hooks ---------------------------------------------------------------------------
    def forward_images(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return finish(self.visual(pixels), normalize)

    def forward_image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual.tokens(pixels)[:, 1:]

    def forward_image_tokens_and_features(self, pixels: torch.Tensor, normalize: bool = True
                                          ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.visual.tokens(pixels)  # one pass: the class token gives the feature, the rest the patch tokens
        return x[:, 1:], finish(self.visual.proj(x[:, 0]), normalize)

    def forward_texts(self, tokens: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        ids = tokens["input_ids"]
        x = self.text.embed(ids)
        return finish(self.text.forward_embeds(x, tokens["attention_mask"], shared_prefix(ids)), normalize)

    def forward_texts_pseudo(self, tokens: dict[str, torch.Tensor], pseudo: torch.Tensor,
                             normalize: bool = True, first_only: bool = False) -> torch.Tensor:
        ids = tokens["input_ids"]
        x = self.text.embed(ids)
        where = placeholder_mask(ids, self.tokenizer.placeholder_id, first_only).unsqueeze(-1)
        x = torch.where(where, pseudo.to(x.dtype).unsqueeze(1).expand_as(x), x)
        shared = shared_prefix(ids, where[..., 0])
        return finish(self.text.forward_embeds(x, tokens["attention_mask"], shared), normalize)

    def token_embedding_weight(self) -> torch.Tensor:
        return self.text.embed.weight

    # persistence -----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str], dtype: torch.dtype = torch.float32,
             extra: dict | None = None) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(d / "model.safetensors.tmp"), metadata={"format": "pt", "kind": "tiny"})
        os.replace(d / "model.safetensors.tmp", d / "model.safetensors")
        cfg = {"kind": "tiny", **self.config.to_dict()}
        if extra:
            cfg["training"] = extra
        (d / "config.json.tmp").write_text(json.dumps(cfg, indent=1))
        os.replace(d / "config.json.tmp", d / "config.json")
        return d

    @staticmethod
    def load(directory: str | os.PathLike[str]) -> "TinyBackbone":
        d = Path(directory)
        cfg_p, w_p = d / "config.json", d / "model.safetensors"
        for p in (cfg_p, w_p):
            if not p.is_file():
                raise CirlabError(f"tiny backbone: {p} not found (expected config.json + model.safetensors in {d})")
        cfg = json.loads(cfg_p.read_text())
        if cfg.pop("kind", "tiny") != "tiny":
            raise CirlabError(f"{cfg_p}: not a tiny backbone config")
        cfg.pop("training", None)
        model = TinyBackbone(TinyConfig.from_dict(cfg))
        state = {k: v.float() for k, v in load_file(str(w_p)).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CirlabError(f"{w_p}: weights do not match config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        return model


SHIPPED = {"world": ASSETS / "tiny-world", "alt": ASSETS / "tiny-alt", "alt-600": ASSETS / "tiny-alt-600"}


@BACKBONES.register("tiny")
def create_tiny(arg: str, config: TinyConfig | None = None, seed: int = 0) -> TinyBackbone:
    if arg in ("", "random"):
        torch.manual_seed(seed)
        return TinyBackbone(config or TinyConfig())
    if arg in SHIPPED:
        return TinyBackbone.load(SHIPPED[arg])
    p = Path(arg).expanduser()
    if p.is_dir():
        return TinyBackbone.load(p)
    raise CirlabError(f"tiny backbone {arg!r}: not a shipped name ({', '.join(SHIPPED)}) nor a directory")
