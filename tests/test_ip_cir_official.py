"""IP-CIR as the authors' retrieval script computes it: max-ratio robust feature, unnormalised, w-weighted
score over the whole gallery, several proxies averaged."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cirlab.data import load_dataset
from cirlab.errors import CirlabError
from cirlab.methods.ip_cir import IPCIR, IPCIRConfig, official_robust_feature
from cirlab.methods.proxies import NearestCaptionCaptioner, WorldRuleRewriter
from cirlab.synth.world import parse_description


def test_max_ratio_robust_feature_by_hand():
    f_src = torch.tensor([[0.6, 0.8]])
    f_aug = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[0.5, -0.5]])
    # max f_aug = 1, max f_src = 0.8 -> 1.25; max d = 0.5 -> 2:  1.25 * [.6, .8] + 2 * [.5, -.5] + [1, 0]
    assert torch.allclose(official_robust_feature(f_src, f_aug, d), torch.tensor([[2.75, 0.0]]))
    # weights s_w = 0.5, t_w = 2, a_w = 1: [.375, .5] + [2, -2] + [1, 0]
    assert torch.allclose(official_robust_feature(f_src, f_aug, d, 0.5, 2.0, 1.0), torch.tensor([[3.375, -1.5]]))
    # the maxima are over the whole tensor (every query of the batch), not per row
    two = official_robust_feature(torch.tensor([[0.6, 0.8], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.5]]),
                                  torch.tensor([[0.5, -0.5], [0.25, 0.0]]))
    assert torch.allclose(two, torch.tensor([[0.6 + 1.0 + 1.0, 0.8 - 1.0], [1.0 + 0.5, 0.5]]))
    # a zero perturbation (every rewrite encodes like its reference caption): the 0/0 term is dropped, no NaN
    zero = official_robust_feature(f_src, f_aug, torch.zeros(1, 2))
    assert torch.allclose(zero, torch.tensor([[1.25 * 0.6 + 1.0, 1.25 * 0.8]]))


def test_official_options_are_checked():
    with pytest.raises(CirlabError, match="robust='max'"):
        IPCIRConfig(generator="g", captioner="c", robust="max")
    with pytest.raises(CirlabError, match="n_proxies=0"):
        IPCIRConfig(generator="g", captioner="c", n_proxies=0)


def test_official_score_over_the_whole_gallery(small_world, tiny_backbone, tmp_path):
    from cirlab.index import build_index
    from cirlab.retrieval import Retriever

    ds = load_dataset(small_world / "test")
    w = 0.65                                     # the script's fusion weight for ViT-L/14
    cfg = IPCIRConfig(generator=f"world-render:{small_world / 'train'}", captioner=f"world:{small_world / 'train'}",
                      rewriter="world", robust="max-ratio", n_proxies=2, whole_gallery=True, lam=1 - w, rescore_depth=1,
                      proxy_weight=1.0, reference_weight=1.0, perturbation_weight=1.0)
    m = IPCIR(tiny_backbone, cfg)
    index = build_index(tiny_backbone, ds.gallery, tmp_path / "index", progress=False)
    r = Retriever(tiny_backbone, index, m, dict(zip(ds.gallery.ids, map(str, ds.gallery.paths))))
    trips = [t for t in ds.triplets if t.targets][:6]
    batch = r.make_batch([t.reference for t in trips], [t.caption for t in trips])
    k = 10
    _, got = r.search_batch(batch, k)

    # independently: captions, rewrite, two renders (seeds 0, 1), the script's formulas
    refs = NearestCaptionCaptioner(tiny_backbone, small_world / "train").caption(batch)
    tgts = [WorldRuleRewriter().rewrite_one(c, t.caption) for c, t in zip(refs, trips)]
    renderer = m.generator.renderer
    feats = []
    for seed in (0, 1):
        renderer.seed = seed
        imgs = [renderer.render(parse_description(d), f"{n}:{d}") for n, d in enumerate(tgts)]
        feats.append(F.normalize(tiny_backbone.encode_images(imgs), dim=-1))
    f_aug = (feats[0] + feats[1]) / 2
    f_src = F.normalize(batch.reference_features, dim=-1)
    d = tiny_backbone.encode_texts(tgts) - tiny_backbone.encode_texts(refs)
    top = f_aug.max()
    # the captioner analog may miss the edited object, so every rewrite can equal its reference (d = 0);
    # the script's 0/0 ratio is then dropped
    d_term = (top / d.max()) * d if d.max() > 0 else 0 * d
    p = (top / f_src.max()) * f_src + d_term + f_aug
    gallery = index.vectors(list(ds.gallery.ids))
    s_t = tiny_backbone.encode_texts(tgts) @ gallery.T
    s = w * s_t + (1 - w) * (p @ gallery.T) * s_t
    want = [[ds.gallery.ids[j] for j in row] for row in torch.argsort(-s, dim=1, stable=True)[:, :k].tolist()]
    assert got == want
    # without whole_gallery only the text side's top k are re-ordered: other images never enter
    m.rescore_depth = 1
    _, top_only = r.search_batch(batch, k)
    text_top = [{ds.gallery.ids[j] for j in row} for row in torch.argsort(-s_t, dim=1, stable=True)[:, :k].tolist()]
    assert [set(row) for row in top_only] == text_top
    assert any(set(row) != t for row, t in zip(got, text_top))


class _AskedTwice:
    """The world's rule rewriter first; asked again, it answers with the reference description unchanged."""

    def __init__(self) -> None:
        self.calls = 0
        self.world = WorldRuleRewriter()

    def rewrite(self, descriptions, texts):
        self.calls += 1
        return self.world.rewrite(descriptions, texts) if self.calls == 1 else list(descriptions)

    def config(self):
        return {"name": "asked-twice"}


def test_several_caption_sets_are_averaged(small_world, tiny_backbone):
    ds = load_dataset(small_world / "test")
    cfg = IPCIRConfig(generator=f"world-render:{small_world / 'train'}", captioner=f"world:{small_world / 'train'}",
                      robust="max-ratio", n_captions=2, reference_weight=1.0)
    rw = _AskedTwice()
    m = IPCIR(tiny_backbone, cfg, rewriter=rw)
    trips = [t for t in ds.triplets if t.targets][:5]
    g = ds.gallery
    paths = [g.paths[g.ids.index(t.reference)] for t in trips]
    from cirlab.methods import QueryBatch

    batch = QueryBatch([t.caption for t in trips], tiny_backbone.encode_images(paths), paths)
    q = m.compose(batch)
    p = batch.extra["ip_cir_proxy"]
    assert rw.calls == 2                                   # the rewriter was asked once per caption set

    refs = NearestCaptionCaptioner(tiny_backbone, small_world / "train").caption(batch)
    tgts = [WorldRuleRewriter().rewrite_one(c, t.caption) for c, t in zip(refs, trips)]
    t1, t2, tr = (tiny_backbone.encode_texts(x) for x in (tgts, refs, refs))
    assert torch.allclose(q, F.normalize((t1 + t2) / 2, dim=-1), atol=1e-5)
    d = ((t1 - tr) + (t2 - tr)) / 2
    f_src = F.normalize(batch.reference_features, dim=-1)
    f_aug = m.proxy_feature(batch)
    top = f_aug.max()
    d_term = (top / d.max()) * d if d.max() > 0 else 0 * d     # d = 0 when every rewrite equals its reference
    want = (top / f_src.max()) * f_src + d_term + f_aug
    assert torch.allclose(p, want, atol=1e-5), (p - want).abs().max()
    with pytest.raises(CirlabError, match="n_captions=0"):
        IPCIRConfig(generator="g", captioner="c", n_captions=0)


def test_a_raw_feature_text_side_gets_raw_features(small_world, tiny_backbone, tmp_path):
    from cirlab.methods import create_method
    from test_cig import raw_searle, retriever_batch

    cfg = IPCIRConfig(generator=f"world-render:{small_world / 'train'}", captioner=f"world:{small_world / 'train'}",
                      text_side=f"searle:{raw_searle(tiny_backbone, tmp_path / 's')}").save(tmp_path / "ip")
    m = create_method(f"ip-cir:{cfg}", tiny_backbone)
    assert m.needs_raw
    _, _, batch = retriever_batch(m, small_world, tiny_backbone, tmp_path, 3)
    assert batch.reference_norms is not None
    assert torch.allclose(m.compose(batch), F.normalize(m.text_method.compose(batch), dim=-1), atol=1e-6)
