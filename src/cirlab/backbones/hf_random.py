"""Randomly initialised CLIP / SigLIP models with tokenizers built offline.

No pretrained CLIP can be downloaded here, so tests and benchmarks exercise the
real ``hf:`` loading code on real architectures with random weights::

    make_random_hf("/tmp/clip", family="clip", size="tiny", corpus=captions)
    model = create_backbone("hf:/tmp/clip")

Tokenizers are built from ``corpus`` (plus a few built-in sentences):
* CLIP: a byte-level BPE vocabulary in CLIP's layout (the 256 byte symbols, the
  same with the end-of-word mark ``</w>``, then merges learned from the corpus,
  then ``<|startoftext|>``/``<|endoftext|>``), so every string is encodable;
* SigLIP: a SentencePiece unigram model trained on the corpus (the real
  ``SiglipTokenizer`` reads it), with ``▁§`` as one piece so the placeholder
  survives SigLIP's punctuation stripping.
"""
from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..errors import CirlabError
from .extras import require

BASE_SENTENCES = (
    "a photo of a cat", "a photo of a dog", "a red circle and a blue square", "the same but bigger",
    "make it green", "remove the triangle", "a photo of $ that is red", "a photo of § that is small",
    "$ with a hat", "§ on the left", "a picture of a car on the road", "two birds in the sky",
)


@dataclass(frozen=True)
class HFSize:
    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    embed_dim: int
    context: int
    #: the text tower's width and heads when they differ from the image tower's (OpenAI CLIP's do)
    text_width: int = 0
    text_heads: int = 0


SIZES: dict[str, HFSize] = {
    "tiny": HFSize(image_size=32, patch_size=8, width=32, depth=2, heads=2, embed_dim=24, context=40),
    "small": HFSize(image_size=224, patch_size=32, width=384, depth=6, heads=6, embed_dim=256, context=64),
    "base": HFSize(image_size=224, patch_size=32, width=768, depth=12, heads=12, embed_dim=512, context=77),
    # OpenAI CLIP's widths, heads, patch, input and context sizes with one layer per tower (the official
    # ViT-L/14 has 24 + 12 layers, ViT-B/32 12 + 12): the shapes an official phi meets, at a test's cost
    "vit-l14-1layer": HFSize(image_size=224, patch_size=14, width=1024, depth=1, heads=16, embed_dim=768, context=77,
                             text_width=768, text_heads=12),
    "vit-b32-1layer": HFSize(image_size=224, patch_size=32, width=768, depth=1, heads=12, embed_dim=512, context=77,
                             text_width=512, text_heads=8),
}


def _corpus(corpus: Iterable[str] | None) -> list[str]:
    return list(BASE_SENTENCES) + [t for t in (corpus or []) if t.strip()]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def learn_bpe_merges(words: Counter, n_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE on words given as tuples of symbols (last symbol carries ``</w>``); ties broken by symbol order."""
    vocab = dict(words)
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for word, count in vocab.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for word, count in vocab.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        vocab = merged
    return merges


def build_clip_tokenizer(corpus: Iterable[str] | None = None, n_merges: int = 300):
    transformers = require("transformers", "hf", "hf")
    symbols = list(bytes_to_unicode().values())
    base_vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    probe = transformers.CLIPTokenizer(vocab=dict(base_vocab, **{"<|startoftext|>": len(base_vocab),
                                                                 "<|endoftext|>": len(base_vocab) + 1}), merges=[])
    backend = probe.backend_tokenizer
    words: Counter = Counter()
    for text in _corpus(corpus):
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            words[tuple(word[:-1]) + (word[-1] + "</w>",)] += 1
    merges = learn_bpe_merges(words, n_merges)
    vocab = dict(base_vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


def build_siglip_tokenizer(directory: Path, corpus: Iterable[str] | None = None, vocab_size: int = 160):
    transformers = require("transformers", "hf", "hf")
    spm = require("sentencepiece", "hf", "hf")
    texts = _corpus(corpus)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   user_defined_symbols=["\u2581\u00a7"],  # "▁§": the placeholder, one piece
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
                                   num_threads=1)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "spiece.model"
    path.write_bytes(model.getvalue())
    return transformers.SiglipTokenizer(vocab_file=str(path), model_max_length=64)


def make_random_hf(directory: str | os.PathLike[str], family: str = "clip", size: str = "tiny",
                   corpus: Sequence[str] | None = None, seed: int = 0) -> Path:
    """Write a randomly initialised ``family`` model of ``size`` with its processor and tokenizer to ``directory``."""
    transformers = require("transformers", "hf", "hf")
    if family not in ("clip", "siglip"):
        raise CirlabError(f"make_random_hf: family {family!r} is not one of clip, siglip")
    if size not in SIZES:
        raise CirlabError(f"make_random_hf: size {size!r} is not one of {', '.join(SIZES)}")
    s = SIZES[size]
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    common = dict(hidden_size=s.width, intermediate_size=4 * s.width, num_hidden_layers=s.depth,
                  num_attention_heads=s.heads)
    vision = dict(common, image_size=s.image_size, patch_size=s.patch_size)
    if s.text_width:
        common = dict(common, hidden_size=s.text_width, intermediate_size=4 * s.text_width,
                      num_attention_heads=s.text_heads or s.heads)
    if family == "clip":
        tok = build_clip_tokenizer(corpus)
        eos = tok.convert_tokens_to_ids("<|endoftext|>")
        text = dict(common, vocab_size=len(tok), max_position_embeddings=s.context, eos_token_id=eos,
                    bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"), pad_token_id=eos)
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=s.embed_dim)
        model = transformers.CLIPModel(config)
        proc = transformers.CLIPImageProcessorPil(size={"shortest_edge": s.image_size},
                                                  crop_size={"height": s.image_size, "width": s.image_size})
    else:
        tok = build_siglip_tokenizer(d, corpus)
        text = dict(common, vocab_size=len(tok), max_position_embeddings=s.context, projection_size=s.width,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
        config = transformers.SiglipConfig(text_config=text, vision_config=vision)
        model = transformers.SiglipModel(config)
        proc = transformers.SiglipImageProcessorPil(size={"height": s.image_size, "width": s.image_size})
    model.save_pretrained(d)
    proc.save_pretrained(d)
    tok.model_max_length = s.context
    tok.save_pretrained(d)
    return d


__all__ = ["SIZES", "build_clip_tokenizer", "build_siglip_tokenizer", "bytes_to_unicode", "learn_bpe_merges",
           "make_random_hf"]
