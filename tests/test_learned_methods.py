"""Held-out checks that each learned method learned what it is for.

Every test here trains on a train split, evaluates on data it never saw (another split of the world,
or the held-out images of one), and must beat baselines computed in the same test by a margin. A method
whose learned core is broken (trained on mismatched targets, its fusion replaced by the image feature or
by the sum, an input it should use ignored) falls below the bar.

The margins are set from the spread over training seeds, measured with

    for s in 0 1 2; do CIRLAB_TEST_SEED=$s .venv/bin/python -m pytest -q -s -p no:cacheprovider \\
        tests/test_learned_methods.py; done

(each test prints the numbers it compares); the measured numbers are quoted in each test's docstring.
A bar sits between the baseline and the lowest measured seed, as a rule at least twice the seed spread
below that seed; where the spread does not allow that, the test says so.

Two worlds: the shared small world (format 2: three registers, camera effects; `conftest.small_world`)
with the alt-text backbone `tiny:alt` (a CLIP text tower with a language prior) for the
textual-inversion methods, and a small format-1 world (procedural, CSS-like texts, flat camera) with
`tiny:world` for the methods trained on triplets.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

SEED = int(os.environ.get("CIRLAB_TEST_SEED", "0"))


def _report(name: str, **numbers: float) -> None:
    print(f"\n[seed {SEED}] {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in numbers.items()))


def _self_recall_at_1(queries: torch.Tensor, gallery: torch.Tensor) -> float:
    """Percent of rows i whose query ranks gallery item i first (ties count against it)."""
    sims = F.normalize(queries.float(), dim=-1) @ F.normalize(gallery.float(), dim=-1).T
    return 100.0 * float(((sims > sims.diag()[:, None]).sum(1) == 0).float().mean())


# ---- textual inversion: Pic2Word, SEARLE (phi and OTI), LinCIR ---------------------------------------------

@pytest.fixture(scope="module")
def alt():
    from cirlab.backbones import create_backbone

    return create_backbone("tiny:alt")


@pytest.fixture(scope="module")
def held_out_images(small_world, alt):
    """The test split's gallery (never trained on): normalised image features and their full descriptions'
    text features (the text-only baseline of the pseudo-word objective)."""
    from cirlab.data import load_dataset

    gal = load_dataset(small_world / "test").gallery
    with torch.no_grad():
        images = F.normalize(alt.encode_images(gal.paths).float(), dim=-1)
        captions = alt.encode_texts(list(gal.captions)).float()
    return images, captions


@pytest.fixture(scope="module")
def ti_trained(small_world, alt):
    """Pic2Word, SEARLE and LinCIR trained on the train split's images (captions for LinCIR), one each."""
    from cirlab.methods.textual_inversion.oti import OTIConfig
    from cirlab.train.textual_inversion import MethodTrainConfig, TrainingData, train_method

    cache: dict = {}

    def get(method: str):
        if method not in cache:
            # LinCIR trains on captions; those of 300 images keep its encoding cheap
            data = TrainingData(small_world / "train", 300 if method == "lincir" else None)
            cfg = MethodTrainConfig(method, steps=150, batch_size=64, hidden=128, prompts="world", seed=SEED,
                                    oti_images=128, oti=OTIConfig(steps=30, batch_size=128, seed=SEED))
            cache[method] = train_method(alt, data, cfg, progress=False)
        return cache[method]

    return get


def pseudo_word_recall(method, backbone, images: torch.Tensor) -> float:
    """The pseudo-word objective on held-out images: "a picture of $" with $ = the method's pseudo token of
    image i must retrieve image i among all of them (R@1, percent)."""
    with torch.no_grad():
        tokens = backbone.tokenize([method.prompts.image_prompt(backbone.placeholder)] * len(images))
        texts = backbone.forward_texts_pseudo(tokens, method.pseudo_tokens(images))
    return _self_recall_at_1(texts, images)


# Held-out pseudo-word R@1 (367 test images; chance 0.27 %), seeds 0 / 1 / 2, shared machine at load ~6:
#   baseline "description": the image's own full description as the text query: 44.69
#   baseline "untrained": the same phi architecture, randomly initialised: 0.27 / 0.27 / 0.54
#   pic2word 72.21 / 68.66 / 66.49 (spread 5.7): bar description + 10
#   searle   14.17 / 12.81 / 13.35 (spread 1.4): bar untrained + 8
#   lincir   13.62 / 13.08 / 19.07 (spread 6.0, from seed 2 alone; captions of 300 train images):
#            bar untrained + 5 (1.3 spreads below the lowest seed)
# SEARLE's and LinCIR's pseudo words do not beat the description at these budgets; their bar is the
# untrained mapping.
TI_BARS = {"pic2word": ("description", 10.0), "searle": ("untrained", 8.0), "lincir": ("untrained", 5.0)}


@pytest.mark.parametrize("name", ["pic2word", "searle", "lincir"])
def test_pseudo_word_retrieves_its_held_out_image(name, ti_trained, alt, held_out_images):
    """The textual-inversion methods' learned core on images they never saw: the pseudo word alone ("a
    picture of $") must single out its source image among the test split's images, by the margin in
    TI_BARS over its baseline. Trained on targets shuffled by one sample, phi carries nothing about its
    image and this fails (measured in scratch runs with the loss's targets rolled by one: Pic2Word 0.27, SEARLE
    3.54, LinCIR 0.00; with phi replaced by the image feature or by a constant token: 0.27-0.54).

    End-to-end CIR is not the bar: on this world, with budgets that fit the test suite, these methods lose
    to image-only and to sum on held-out queries (R@10 on the small world's test split: Pic2Word 58-62,
    SEARLE 52-58, LinCIR trained on all train captions 47, image-only 83, sum 87), as they do on the full world (docs/world.md)."""
    from cirlab.methods.textual_inversion import Checkpoint, Phi, PhiMethod

    images, captions = held_out_images
    ck = ti_trained(name)
    method = PhiMethod(alt, ck)
    got = pseudo_word_recall(method, alt, images)
    torch.manual_seed(SEED)
    untrained = PhiMethod(alt, Checkpoint(name, Phi(ck.phi.cfg).eval(), ck.prompts, alt.spec))
    baselines = {"description": _self_recall_at_1(captions, images),
                 "untrained": pseudo_word_recall(untrained, alt, images)}
    _report(f"{name} pseudo-word R@1", method=got, **baselines)
    against, margin = TI_BARS[name]
    assert got > baselines[against] + margin, (got, baselines)


# ---- methods trained on triplets: CLIP4Cir Combiner, DAIG, Fusion-Diff -------------------------------------

@pytest.fixture(scope="module")
def css_world(tmp_path_factory):
    """A format-1 world (procedural, CSS-like texts; flat camera), train and test splits: 400 train triplets,
    200 test queries against 1,223 test images. The setting the triplet-trained methods were built for."""
    from cirlab.world import WorldConfig, generate_world
    from cirlab.world.generate import LEGACY

    root = tmp_path_factory.mktemp("css-world")
    generate_world(root, WorldConfig.from_dict({**WorldConfig(seed=3).small(200).to_dict(), **LEGACY}),
                   ("train", "test"), progress=False)
    return root


@pytest.fixture(scope="module")
def world_backbone():
    from cirlab.backbones import create_backbone

    return create_backbone("tiny:world")


@pytest.fixture(scope="module")
def css_features(css_world, world_backbone, tmp_path_factory):
    """(train triplet features, test split features, test split) of the format-1 world."""
    from cirlab.data import load_dataset
    from cirlab.train.features import eval_features, triplet_features

    cache = tmp_path_factory.mktemp("css-features")
    train, test = load_dataset(css_world / "train"), load_dataset(css_world / "test")
    return (triplet_features(world_backbone, train, cache, progress=False),
            eval_features(world_backbone, test, cache, progress=False), test)


@pytest.fixture(scope="module")
def css_synthetic(css_world, tmp_path_factory):
    """600 synthetic triplets scripted by the template scripter and drawn by the world generator (never the
    world's own triplets; its held-out (colour, shape) pairs banned), as Fusion-Diff and DAIG train on."""
    from cirlab.train.fusion_diff import heldout_combos, synthetic_triplets

    return synthetic_triplets(tmp_path_factory.mktemp("css-synthetic"), 600, "world:real", SEED,
                              heldout_combos(css_world / "train"), 64, progress=False)


def _map10(compose, ev) -> float:
    from cirlab.train.features import evaluate_features

    return evaluate_features(compose, ev)["all"]["map@10"]


def image_only(reference: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return reference


def summed(reference: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return F.normalize(reference.float(), dim=-1) + F.normalize(text.float(), dim=-1)


def _train_combiner(train, out, synthetic=None, finetune_epochs: int = 30, pretrain_epochs: int = 0,
                    batch_size: int = 32, lr: float = 2e-3, margin: float = 0.0):
    from cirlab.methods.combiner import CombinerConfig
    from cirlab.train.supervised import StageConfig, SupervisedConfig, train_supervised

    cfg = SupervisedConfig(CombinerConfig(dim=train.reference.shape[1], projection=64, hidden=128, dropout=0.1),
                           pretrain=StageConfig(epochs=pretrain_epochs, batch_size=64, lr=2e-3, drsp=1.0),
                           finetune=StageConfig(epochs=finetune_epochs, batch_size=batch_size, lr=lr, margin=margin),
                           seed=SEED)
    return train_supervised(cfg, train, out, synthetic, progress=False).model.eval()


def test_combiner_beats_image_only_and_sum_on_held_out_queries(css_features, tmp_path):
    """The CLIP4Cir Combiner trained on the 400 train triplets, on the 200 test queries (mAP@10, percent).

    Measured (seeds 0 / 1 / 2, shared machine at load ~6): Combiner 51.57 / 50.74 / 51.85; image-only
    42.50; sum 25.03. Bar: the better baseline + 6 (the seed spread is 1.1). A Combiner whose output is the image feature or the sum scores exactly those baselines."""
    train, ev, _ = css_features
    model = _train_combiner(train, tmp_path / "ck")
    got, image, total = _map10(model, ev), _map10(image_only, ev), _map10(summed, ev)
    _report("combiner mAP@10", combiner=got, image=image, sum=total)
    assert got > max(image, total) + 6.0, (got, image, total)


def test_daig_synthetic_pretraining_then_few_shot_fine_tuning_beats_image_only_and_sum(css_features, css_synthetic,
                                                                                       world_backbone, tmp_path):
    """DAIG's recipe: pre-train on synthetic triplets with DRSP, fine-tune on 32 real ones with FRA; and the
    synthetic stage alone (no real triplet). Held-out test queries, mAP@10 percent.

    Measured (seeds 0 / 1 / 2, shared machine at load ~6): DAIG 49.22 / 50.24 / 50.42; synthetic only
    52.21 / 51.17 / 50.15; image-only 42.50; sum 25.03. Bars: the better baseline + 4 for DAIG (spread
    1.2) and + 3 for synthetic only (spread 2.1). In a separate run with the same budgets, 32 real shots
    alone gave 48.1 / 49.2 / 49.6. The paper's claim that synthetic pre-training improves on
    the real shots alone is not supported here by more than the seed spread, so it is not asserted; with
    synthetic targets that do not match their queries, the synthetic-only model falls to chance."""
    from cirlab.data import load_dataset
    from cirlab.train.features import triplet_features

    train, ev, _ = css_features
    synthetic = triplet_features(world_backbone, load_dataset(css_synthetic), tmp_path / "cache", progress=False)
    daig = _train_combiner(train.subset(range(32)), tmp_path / "daig", synthetic, pretrain_epochs=10,
                           batch_size=16, lr=1e-3, margin=0.1)
    synthetic_only = _train_combiner(train.subset(range(32)), tmp_path / "synthetic", synthetic, pretrain_epochs=10,
                                     finetune_epochs=0)
    got, alone, image, total = _map10(daig, ev), _map10(synthetic_only, ev), _map10(image_only, ev), _map10(summed, ev)
    _report("daig mAP@10", daig=got, synthetic_only=alone, image=image, sum=total)
    assert got > max(image, total) + 4.0, (got, image, total)
    assert alone > max(image, total) + 3.0, (alone, image, total)


@pytest.fixture(scope="module")
def fusion_diff(css_world, css_synthetic, world_backbone, tmp_path_factory):
    """Fusion-Diff, both stages with the quick budget (300 steps each): the prior on the train split's
    image-caption pairs, the fusion module and Control-Adapter on the synthetic triplets."""
    from dataclasses import replace

    from cirlab.train import fusion_diff as fd

    out = tmp_path_factory.mktemp("fusion-diff")
    prior_cfg, adapter_cfg = fd.quick_configs()
    data = fd.pair_data(world_backbone, css_world / "train", out / "cache", prior_cfg.max_images, progress=False)
    prior = fd.train_prior(world_backbone, data, replace(prior_cfg, steps=300, seed=SEED), out / "prior",
                           progress=False)
    fd.train_adapter(world_backbone, prior, css_synthetic, replace(adapter_cfg, steps=300, seed=SEED), out / "model",
                     out / "cache", progress=False)
    return f"fusion-diff:{out / 'model'}"


def test_fusion_diff_uses_the_reference_and_its_fusion_beats_image_only_and_sum(fusion_diff, css_features,
                                                                                world_backbone):
    """Fusion-Diff on the 200 held-out test queries of the format-1 world, mAP@10 percent, through the
    method (`fusion-diff:DIR,mix=M`).

    Measured (seeds 0 / 1 / 2, shared machine at load ~6):
    - the fused feature (`mix=1`: the learned fusion module, trained through the adapter's denoising loss)
      47.92 / 49.82 / 48.23 against image-only 42.50 and sum 25.03: bar the better baseline + 1.5 (spread 1.9;
      a fusion module replaced by the sum or the image feature scores those baselines);
    - the generated embedding (`mix=0`) 13.76 / 12.58 / 13.80 against the same sampler without the fused
      feature (the frozen prior alone, which never sees the reference) 2.53 / 1.73 / 1.90 and text-only 5.75:
      bar the better of the two + 4 (spread 1.2). Sampling that ignores the fused feature lands on the
      prior-alone level and fails.
    At this budget the generated embedding loses to image-only and to sum (it needs far more training: at
    2,000 steps per stage and 2,000 triplets, 73 s on the shared machine, seed 0 measured 44.7 against
    image-only 42.5); it is not asserted to beat them."""
    from cirlab.methods import QueryBatch, create_method

    _, ev, test = css_features
    texts = [t.caption for t in test.triplets if t.targets]

    def through_method(spec: str):
        method = create_method(spec, world_backbone)

        def compose(reference: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return method.compose(QueryBatch(texts, reference))
        return compose

    generated = _map10(through_method(f"{fusion_diff},mix=0"), ev)
    fused = _map10(through_method(f"{fusion_diff},mix=1"), ev)
    default = create_method(fusion_diff, world_backbone)
    with torch.no_grad():
        prior_alone = _map10(lambda r, t: default.pipeline.sample(t, None, steps=default.sampling.steps,
                                                                  seed=default.sampling.seed), ev)
    image, total, text = _map10(image_only, ev), _map10(summed, ev), _map10(lambda r, t: t, ev)
    _report("fusion-diff mAP@10", generated=generated, fused=fused, prior_alone=prior_alone, image=image,
            sum=total, text=text)
    assert fused > max(image, total) + 1.5, (fused, image, total)
    assert generated > max(prior_alone, text) + 4.0, (generated, prior_alone, text)


# ---- PrediCIR -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def predicir(small_world, alt):
    """PrediCIR trained on 512 of the train split's images and their captions (100 steps), and the test
    split's images as world views (never trained on)."""
    from cirlab.train.predicir import PrediCIRTrainConfig, WorldViewData, train_predicir

    train = WorldViewData(small_world / "train", alt, max_images=512, seed=SEED, progress=False)
    cfg = PrediCIRTrainConfig(steps=100, batch_size=32, width=64, depth=1, heads=2, fuse_hidden=128, seed=SEED)
    return train_predicir(alt, train, cfg, progress=False), WorldViewData(small_world / "test", alt, progress=False)


def test_predicir_pseudo_word_uses_its_predicted_target_content(predicir, alt):
    """PrediCIR's learned core on held-out images: the source view is a random crop of a test image (the
    rest filled with the background), the action one of its captions; the pseudo word of "a picture of $"
    must retrieve the full image among the 367 test images (R@1, percent). With each query's own predicted
    target latents it must beat the same model given another query's predicted latents (the latents rolled
    by one in the batch) by the margin below: a pseudo word that ignores the predicted latents scores the
    same both ways and fails.

    Measured (seeds 0 / 1 / 2, 100 steps on 512 images, shared machine at load ~6): own latents 6.81 / 6.54 /
    4.36; rolled latents 1.63 / 1.63 / 1.36. Bar: rolled + 2. The seed spread (2.5) is wider than this bar's
    distance to the lowest seed (1.0): the test trains with seed 0 (3.2 above the bar), and a new seed may
    need a longer budget. With the fusion ignoring the predicted latents (sabotaged in a scratch run) both
    came out at 2.72. In a separate run (train images drawn with seed 0 for every training seed) the action
    replaced by the empty text gave 2.7 / 3.3 / 3.0 against 6.8 / 5.7 / 5.4. Baselines it does not beat: the crop's own image feature 12.5, the crop's feature plus
    the caption's (sum) 27.2, the caption alone 48.0; on held-out CIR queries it is at text-only level
    (docs/predicir.md), so neither is the bar here."""
    from cirlab.methods.predicir.views import ViewConfig, sample_crop, source_views, visible_masks

    ck, test = predicir
    gen = torch.Generator().manual_seed(0)
    boxes = [sample_crop(test.grid, ViewConfig(full_view_prob=0.0), gen) for _ in range(len(test))]
    with torch.no_grad():
        views = source_views(test.pixels.float(), boxes, test.patch)
        tokens, crop = alt.forward_image_tokens(views).float(), alt.forward_images(views).float()
        predicted = ck.model.predictor(tokens, visible_masks(boxes, test.grid), test.caption_features[:, 0])
        prompt = alt.tokenize([ck.prompts.image_prompt(alt.placeholder)] * len(test))
        own = alt.forward_texts_pseudo(prompt, ck.model.fusion(predicted, crop))
        rolled = alt.forward_texts_pseudo(prompt, ck.model.fusion(predicted.roll(1, 0), crop))
    got, other = _self_recall_at_1(own, test.target_global), _self_recall_at_1(rolled, test.target_global)
    _report("predicir crop-to-image R@1", own_latents=got, rolled_latents=other,
            crop_image=_self_recall_at_1(crop, test.target_global))
    assert got > other + 2.0, (got, other)
