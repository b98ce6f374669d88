"""CIG: pseudo-target -> inversion -> second composition -> weighted fusion; the diffusers pixel generator."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cirlab.data import load_dataset
from cirlab.errors import CirlabError
from cirlab.methods import QueryBatch, create_method
from cirlab.methods.cig import CIG, CIGConfig
from cirlab.methods.generators import create_proxy_generator
from cirlab.methods.proxies import NearestCaptionCaptioner, WorldRuleRewriter
from cirlab.methods.textual_inversion import Checkpoint, Phi, PhiConfig, get_templates
from cirlab.synth.world import parse_description


@pytest.fixture()
def searle_dir(tiny_backbone, tmp_path) -> Path:
    torch.manual_seed(0)
    phi = Phi(PhiConfig(tiny_backbone.embed_dim, tiny_backbone.token_dim, 32, 2, "gelu", 0.0)).eval()
    ck = Checkpoint("searle", phi, get_templates("world"), tiny_backbone.spec, tiny_backbone.fingerprint())
    ck.save(tmp_path / "searle")
    return tmp_path / "searle"


def _batch(ds, n, backbone):
    trips = [t for t in ds.triplets if t.targets][:n]
    g = ds.gallery
    paths = [g.paths[g.ids.index(t.reference)] for t in trips]
    return trips, QueryBatch([t.caption for t in trips], backbone.encode_images(paths), paths,
                             [t.reference for t in trips])


def _second(backbone, searle, texts, feats):
    tok = backbone.tokenize([searle.prompts.query_prompt(t, backbone.placeholder) for t in texts])
    with torch.no_grad():
        return F.normalize(backbone.forward_texts_pseudo(tok, searle.phi(feats)), dim=-1)


def test_cig_fuses_the_pseudo_target_composition_with_a_weight(small_world, tiny_backbone, searle_dir, tmp_path):
    ds = load_dataset(small_world / "test")
    w = 0.3
    path = CIGConfig(inversion=f"searle:{searle_dir}", generator=f"world-render:{small_world / 'train'}",
                     weight=w, seed=2).save(tmp_path / "cig")
    m = create_method(f"cig:{path}", tiny_backbone)
    trips, batch = _batch(ds, 6, tiny_backbone)
    got = m.compose(batch)

    searle = create_method(f"searle:{searle_dir}", tiny_backbone)
    q1 = F.normalize(searle.compose(QueryBatch(batch.texts, batch.reference_features)), dim=-1)
    # the pseudo target, independently: nearest train caption -> rule rewrite -> render -> encode
    refs = NearestCaptionCaptioner(tiny_backbone, small_world / "train").caption(batch)
    tgts = [WorldRuleRewriter().rewrite_one(r, t.caption) for r, t in zip(refs, trips)]
    m.generator.renderer.seed = 2
    imgs = [m.generator.renderer.render(parse_description(d), f"{n}:{d}") for n, d in enumerate(tgts)]
    q2 = _second(tiny_backbone, searle, batch.texts, tiny_backbone.encode_images(imgs))
    assert torch.allclose(got, F.normalize((1 - w) * q1 + w * q2, dim=-1), atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(got)), atol=1e-5)
    assert not torch.allclose(q1, q2, atol=1e-3)

    # weight 0 is the inversion method alone; weight 1 the pseudo target's composition alone
    m0 = CIG(tiny_backbone, CIGConfig(inversion=f"searle:{searle_dir}", generator=m.cfg.generator, weight=0.0,
                                      seed=2))
    assert torch.allclose(m0.compose(QueryBatch(batch.texts, batch.reference_features)), q1, atol=1e-5)
    m1 = CIG(tiny_backbone, CIGConfig(inversion=f"searle:{searle_dir}", generator=m.cfg.generator, weight=1.0,
                                      seed=2))
    assert torch.allclose(m1.compose(QueryBatch(batch.texts, batch.reference_features)), q2, atol=1e-5)
    assert m.config()["generator_config"]["analog"] is True


class _TargetEmbeddings:
    """An embedding generator that returns given target features (tests the embedding path of CIG)."""

    kind = "embedding"
    needs_pixels = False

    def __init__(self, feats):
        self.feats = feats

    def generate(self, batch, seed=0):
        return self.feats * 3.0            # not normalised: CIG must normalise through proxy_embeddings

    def config(self):
        return {"name": "given"}


def test_cig_with_an_embedding_generator_and_the_image_template(small_world, tiny_backbone, searle_dir):
    ds = load_dataset(small_world / "test")
    trips, batch = _batch(ds, 4, tiny_backbone)
    g = ds.gallery
    target = tiny_backbone.encode_images([g.paths[g.ids.index(t.targets[0])] for t in trips])
    cfg = CIGConfig(inversion=f"searle:{searle_dir}", generator="unused", weight=0.5, second="image")
    m = CIG(tiny_backbone, cfg, generator=_TargetEmbeddings(target))
    q1, q2 = m.compose_parts(batch)
    searle = m.inversion
    tok = tiny_backbone.tokenize(["a picture of $"] * len(trips))
    with torch.no_grad():
        want2 = F.normalize(tiny_backbone.forward_texts_pseudo(tok, searle.phi(target)), dim=-1)
    assert torch.allclose(q2, want2, atol=1e-5)
    assert torch.allclose(m.compose(batch), F.normalize(q1 + q2, dim=-1), atol=1e-5)


def test_cig_errors(tiny_backbone, searle_dir, tmp_path):
    with pytest.raises(CirlabError, match="weight"):
        CIGConfig(inversion="x", generator="y", weight=2.0)
    with pytest.raises(CirlabError, match="second"):
        CIGConfig(inversion="x", generator="y", second="both")
    bad = CIGConfig(inversion="sum", generator="world-render:/nonexistent").save(tmp_path / "bad")
    with pytest.raises(CirlabError, match="pseudo-word"):
        create_method(f"cig:{bad}", tiny_backbone)
    with pytest.raises(CirlabError, match="no such config"):
        create_method(f"cig:{tmp_path / 'missing'}", tiny_backbone)
    with pytest.raises(CirlabError, match="no such pipeline"):
        create_proxy_generator(f"diffusers:{tmp_path / 'nope'}", tiny_backbone)


def tiny_sd_pipeline(out: Path) -> Path:
    """A miniature random Stable Diffusion pipeline with a character-level CLIP tokenizer, saved to ``out``."""
    from cirlab.synth.diffusion import random_sd_pipeline

    return random_sd_pipeline(out / "pipeline")


def test_diffusers_generator_on_a_tiny_pipeline_and_cig_with_it(small_world, tiny_backbone, searle_dir, tmp_path):
    pipe_dir = tiny_sd_pipeline(tmp_path / "sd")
    gen = create_proxy_generator(f"diffusers:{pipe_dir},steps=2,guidance=1.0,size=16", tiny_backbone)
    assert gen.kind == "pixels"
    batch = QueryBatch(["make the red circle blue", "remove the star"], torch.zeros(2, tiny_backbone.embed_dim))
    a, b = gen.generate(batch, seed=3), gen.generate(batch, seed=3)
    c = gen.generate(batch, seed=4)
    assert [im.size for im in a] == [(16, 16), (16, 16)]
    arr = lambda ims: torch.stack([torch.from_numpy(np.asarray(im).copy()) for im in ims])
    assert torch.equal(arr(a), arr(b)) and not torch.equal(arr(a), arr(c))
    # the prompt is the target description when a method made one, else the modification text
    assert gen.prompts(batch) == batch.texts
    batch.extra["target_captions"] = ["a blue circle", "a square"]
    assert gen.prompts(batch) == ["a blue circle", "a square"]

    ds = load_dataset(small_world / "test")
    _, qb = _batch(ds, 2, tiny_backbone)
    cfg = CIGConfig(inversion=f"searle:{searle_dir}", generator=f"diffusers:{pipe_dir},steps=2,guidance=1.0,size=16",
                    weight=0.5, seed=3)
    m = CIG(tiny_backbone, cfg)
    _, q2 = m.compose_parts(qb)
    imgs = gen.generate(QueryBatch(qb.texts, qb.reference_features), seed=3)
    want2 = _second(tiny_backbone, m.inversion, qb.texts, tiny_backbone.encode_images(imgs))
    assert torch.allclose(q2, want2, atol=1e-5)


def test_zero_shot_trainer_trains_searle_and_writes_a_working_spec(small_world, tiny_backbone, tmp_path):
    import cirlab.train.cig  # noqa: F401  (registers the trainer)
    from cirlab.eval.evaluate import evaluate_methods
    from cirlab.train.zeroshot import ZEROSHOT_TRAINERS, ZeroShotContext

    ctx = ZeroShotContext(tiny_backbone, small_world, tmp_path / "cig", quick=True, progress=False)
    spec = ZEROSHOT_TRAINERS.get("cig")(ctx)
    cfg = json.loads(Path(spec.split(":", 1)[1]).read_text())
    assert cfg["inversion"] == f"searle:{tmp_path / 'cig' / 'searle'}"
    assert cfg["generator"].startswith("t2i:")           # the non-oracle text-to-image analog
    # a SEARLE trained earlier in the run is reused, not retrained
    ctx2 = ZeroShotContext(tiny_backbone, small_world, tmp_path / "cig2", quick=True, progress=False,
                           trained={"searle": cfg["inversion"]})
    spec2 = ZEROSHOT_TRAINERS.get("cig")(ctx2)
    assert json.loads(Path(spec2.split(":", 1)[1]).read_text())["inversion"] == cfg["inversion"]
    assert not (tmp_path / "cig2" / "searle").exists()
    with pytest.raises(CirlabError, match="fusion-diff"):
        ZEROSHOT_TRAINERS.get("cig")(ZeroShotContext(tiny_backbone, small_world, tmp_path / "cig3", quick=True,
                                                     progress=False, options={"cig": {"generator": "fusion-diff"}}))
    test = load_dataset(small_world / "test")
    [res] = evaluate_methods(test, tiny_backbone, [spec], tmp_path / "index", progress=False)
    # what evaluate reports is the recall of CIG's own queries (one query of slack for near ties)
    from recall_by_hand import recall_by_hand

    from cirlab.methods import create_method

    n = len([t for t in test.triplets if t.targets])
    by_hand = recall_by_hand(create_method(spec, tiny_backbone), test, tiny_backbone)
    assert res.metrics["recall@10"] == pytest.approx(by_hand, abs=100 / n + 0.01), by_hand


def test_composed_training_prompt_rebuilds_the_image_description(small_world):
    import random

    from cirlab.methods.proxies.pixels import composed_prompt
    from cirlab.train.cig import composed_training_prompt

    ds = load_dataset(small_world / "train")
    rng = random.Random(0)
    checked = 0
    for cap, meta in zip(ds.gallery.captions, ds.gallery.meta):
        prompt = composed_training_prompt(cap, meta, rng)
        if len(meta["objects"]) < 2:
            assert prompt == cap
            continue
        ref, mod = prompt.split(" that ")
        assert prompt == composed_prompt(ref, mod) and mod.startswith("add a ")
        # the reference part lacks one object and the modification puts exactly that object back
        assert len(parse_description(ref).objects) == len(meta["objects"]) - 1
        assert parse_description(WorldRuleRewriter().rewrite_one(ref, mod)) == parse_description(cap)
        checked += 1
    assert checked > 20
    assert composed_training_prompt("a cat", {}, rng) == "a cat"


def test_cig_generator_fine_tuning_changes_only_the_unet(small_world, tiny_backbone, tmp_path):
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    from cirlab.cli import main
    from cirlab.train.cig import CIGGeneratorConfig, train_cig_generator

    pipe_dir = tiny_sd_pipeline(tmp_path / "sd")
    out = tmp_path / "cig-gen"
    summary = train_cig_generator(pipe_dir, small_world / "train", out,
                                  CIGGeneratorConfig(steps=3, batch_size=4, max_images=16, log_every=1), progress=False)
    assert [e["step"] for e in summary["log"]] == [1, 2, 3] and all(e["loss"] > 0 for e in summary["log"])
    assert summary["size"] == 16 and (out / "cig-generator.json").is_file()
    for part, changed in (("unet", True), ("vae", False), ("text_encoder", False)):
        [before] = list((pipe_dir / part).glob("*.safetensors"))
        [after] = list((out / part).glob("*.safetensors"))
        a, b = load_file(str(before)), load_file(str(after))
        assert a.keys() == b.keys()
        assert any(not torch.equal(a[k], b[k]) for k in a) == changed, part
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))
    gen = create_proxy_generator(f"diffusers:{out},steps=2,guidance=1.0", tiny_backbone)
    assert isinstance(gen.pipeline, DiffusionPipeline)
    assert gen.generate(QueryBatch(["add a red circle"], torch.zeros(1, 4)), seed=0)[0].size == (16, 16)
    # the command line: same training, via `cirlab train cig`
    assert main(["train", "cig", "--pipeline", str(pipe_dir), "--data", str(small_world / "train"), "--out",
                 str(tmp_path / "cli"), "--steps", "1", "--batch-size", "2", "--max-images", "4"]) == 0
    assert (tmp_path / "cli" / "model_index.json").is_file()


def test_cig_with_a_captioner_prompts_the_generator_with_composed_prompts(small_world, tiny_backbone, searle_dir,
                                                                           tmp_path):
    pipe_dir = tiny_sd_pipeline(tmp_path / "sd")
    cfg = CIGConfig(inversion=f"searle:{searle_dir}", generator=f"diffusers:{pipe_dir},steps=1,guidance=1.0",
                    captioner=f"world:{small_world / 'train'}")
    m = CIG(tiny_backbone, cfg)
    ds = load_dataset(small_world / "test")
    _, batch = _batch(ds, 3, tiny_backbone)
    m.compose(batch)
    refs = NearestCaptionCaptioner(tiny_backbone, small_world / "train").caption(batch)
    assert m.generator.prompts(batch) == [f"{r} that {t}" for r, t in zip(refs, batch.texts)]


def raw_searle(backbone, out: Path) -> Path:
    """A SEARLE checkpoint whose phi takes raw projected features (as the imported official ones do)."""
    torch.manual_seed(1)
    phi = Phi(PhiConfig(backbone.embed_dim, backbone.token_dim, 32, 2, "gelu", 0.0, raw_input=True)).eval()
    Checkpoint("searle", phi, get_templates("world"), backbone.spec, backbone.fingerprint()).save(out)
    return out


def retriever_batch(method, world: Path, backbone, tmp_path: Path, n: int):
    """(test dataset, its first ``n`` labelled triplets, their query batch as the retriever makes it)."""
    from cirlab.index import build_index
    from cirlab.retrieval import Retriever

    ds = load_dataset(world / "test")
    index = build_index(backbone, ds.gallery, tmp_path / "index", progress=False)
    r = Retriever(backbone, index, method, dict(zip(ds.gallery.ids, map(str, ds.gallery.paths))))
    trips = [t for t in ds.triplets if t.targets][:n]
    return ds, trips, r.make_batch([t.reference for t in trips], [t.caption for t in trips])


def test_cig_with_a_raw_feature_phi_inverts_the_raw_features(small_world, tiny_backbone, tmp_path):
    """An imported (official) phi takes raw projected features: CIG asks the retriever for the references'
    raw features and inverts the imagined target's raw feature too."""
    w = 0.4
    cfg = CIGConfig(inversion=f"searle:{raw_searle(tiny_backbone, tmp_path / 'raw-searle')}",
                    generator=f"world-render:{small_world / 'train'}", weight=w, seed=2).save(tmp_path / "cig")
    m = create_method(f"cig:{cfg}", tiny_backbone)
    assert m.needs_raw
    ds, trips, batch = retriever_batch(m, small_world, tiny_backbone, tmp_path, 4)
    got = m.compose(batch)

    g = ds.gallery
    raw_ref = tiny_backbone.encode_images([g.paths[g.ids.index(t.reference)] for t in trips], normalize=False)
    imgs = m.generator.generate(batch, seed=2)
    raw_gen = tiny_backbone.encode_images(imgs, normalize=False)
    q1 = _second(tiny_backbone, m.inversion, batch.texts, raw_ref)
    q2 = _second(tiny_backbone, m.inversion, batch.texts, raw_gen)
    assert torch.allclose(got, F.normalize((1 - w) * q1 + w * q2, dim=-1), atol=1e-4)
    # the normalised features would give other tokens (the phi's first layer has biases)
    q2n = _second(tiny_backbone, m.inversion, batch.texts, F.normalize(raw_gen, dim=-1))
    assert (q2n - q2).abs().max() > 1e-3
