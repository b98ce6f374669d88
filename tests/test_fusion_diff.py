"""Fusion-Diff: prior, DDIM scheduler, Control-Adapter, fusion, training, checkpoints, method, plot."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cirlab.errors import CirlabError
from cirlab.methods.fusion_diff import (
    AdapterConfig,
    ControlAdapter,
    DDIMConfig,
    DDIMScheduler,
    EmbeddingPrior,
    FusionConfig,
    FusionDiffPipeline,
    FusionModule,
    PriorConfig,
    parse_spec_arg,
)

D, W, DEPTH = 8, 16, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one torch thread is faster than two on a shared CPU (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pipe(seed: int = 0, adapter: bool = True, prediction: str = "x0") -> FusionDiffPipeline:
    torch.manual_seed(seed)
    prior = EmbeddingPrior(PriorConfig(D, W, DEPTH, prediction))
    ad = ControlAdapter(AdapterConfig(D, W, DEPTH, hidden=12, layers=1)) if adapter else None
    fusion = FusionModule(FusionConfig(D, hidden=16)) if adapter else None
    return FusionDiffPipeline(prior, DDIMScheduler(DDIMConfig(num_train_timesteps=50)), ad, fusion).eval()


def test_shapes_and_normalisation():
    pipe = _pipe()
    x, t, txt = torch.randn(5, D), torch.randint(0, 50, (5,)), F.normalize(torch.randn(5, D), dim=-1)
    res = pipe.adapter(torch.randn(5, D), x, t)
    assert len(res) == DEPTH and all(r.shape == (5, W) for r in res)
    assert pipe.prior(x, t, txt).shape == (5, D)
    assert pipe.prior(x, t, txt, res).shape == (5, D)
    fused = pipe.fusion(torch.randn(5, D), torch.randn(5, D))
    assert fused.shape == (5, D) and torch.allclose(fused.norm(dim=-1), torch.ones(5), atol=1e-5)
    gen = pipe.sample(txt, fused, steps=4, samples=3)
    assert gen.shape == (5, D) and torch.allclose(gen.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert pipe.prior.cfg.scale == pytest.approx(math.sqrt(D))
    with pytest.raises(ValueError, match="2 residuals for 3 blocks"):
        pipe.prior(x, t, txt, res[:2])


def test_zero_init_adapter_leaves_prior_unchanged():
    pipe = _pipe()
    x, t, txt = torch.randn(6, D), torch.randint(0, 50, (6,)), torch.randn(6, D)
    fused = torch.randn(6, D)
    res = pipe.adapter(fused, x, t)
    assert all(torch.count_nonzero(r) == 0 for r in res)
    assert torch.equal(pipe.prior(x, t, txt, res), pipe.prior(x, t, txt))
    assert torch.equal(pipe.denoise(x, t, txt, fused), pipe.prior(x, t, txt))
    # the same pipeline sampled with and without the (zero) adapter gives the same embeddings
    no_adapter = FusionDiffPipeline(pipe.prior, pipe.scheduler)
    assert torch.equal(pipe.sample(txt, fused, steps=5, seed=3), no_adapter.sample(txt, None, steps=5, seed=3))
    # once the zero projections move, the adapter does change the output (the test can fail)
    with torch.no_grad():
        pipe.adapter.zero_proj[1].weight.normal_(0, 0.5)
    assert not torch.allclose(pipe.prior(x, t, txt, pipe.adapter(fused, x, t)), pipe.prior(x, t, txt))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_sampling_is_deterministic_with_a_seed(eta):
    pipe = _pipe()
    txt, fused = torch.randn(4, D), F.normalize(torch.randn(4, D), dim=-1)
    with torch.no_grad():
        for proj in pipe.adapter.zero_proj:  # a non-trivial adapter
            proj.weight.normal_(0, 0.1)
    a = pipe.sample(txt, fused, steps=6, eta=eta, seed=11)
    b = pipe.sample(txt, fused, steps=6, eta=eta, seed=11)
    c = pipe.sample(txt, fused, steps=6, eta=eta, seed=12)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_ddim_step_matches_hand_computation():
    cfg = DDIMConfig(num_train_timesteps=10, beta_schedule="linear", beta_start=0.1, beta_end=0.5)
    s = DDIMScheduler(cfg)
    betas = [0.1 + (0.5 - 0.1) * i / 9 for i in range(10)]
    abar = [math.prod(1 - b for b in betas[:i + 1]) for i in range(10)]
    assert s.alphas_cumprod.tolist() == pytest.approx(abar, rel=1e-12)
    assert s.set_timesteps(4).tolist() == [9, 6, 3, 0]     # trailing: from T - 1 down to 0
    x_t, pred = torch.tensor([[0.3, -1.2]], dtype=torch.float64), torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    a_t, a_p = abar[6], abar[3]
    # eta = 0, x0-prediction
    eps = [(x - math.sqrt(a_t) * p) / math.sqrt(1 - a_t) for x, p in zip([0.3, -1.2], [0.5, 0.25])]
    want = [math.sqrt(a_p) * p + math.sqrt(1 - a_p) * e for p, e in zip([0.5, 0.25], eps)]
    out = s.step(pred, 6, x_t, prediction="x0", eta=0.0)
    assert out.prev_sample[0].tolist() == pytest.approx(want, rel=1e-10)
    assert out.pred_x0[0].tolist() == [0.5, 0.25]
    # eta = 0, eps-prediction
    x0 = [(x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t) for x, e in zip([0.3, -1.2], [0.5, 0.25])]
    want = [math.sqrt(a_p) * p + math.sqrt(1 - a_p) * e for p, e in zip(x0, [0.5, 0.25])]
    assert s.step(pred, 6, x_t, prediction="eps").prev_sample[0].tolist() == pytest.approx(want, rel=1e-10)
    # the last step (t=0 -> -1) returns the x0 prediction itself
    assert s.step(pred, 0, x_t, prediction="x0").prev_sample[0].tolist() == pytest.approx([0.5, 0.25])
    # eta = 1: sigma from the DDIM formula, noise from the generator
    sigma = math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    z = torch.randn((1, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    want = [math.sqrt(a_p) * p + math.sqrt(1 - a_p - sigma ** 2) * e + sigma * float(zz)
            for p, e, zz in zip([0.5, 0.25], eps, z[0])]
    got = s.step(pred, 6, x_t, prediction="x0", eta=1.0, generator=torch.Generator().manual_seed(5)).prev_sample
    assert got[0].tolist() == pytest.approx(want, rel=1e-10)
    with pytest.raises(CirlabError, match="not in the inference sequence"):
        s.step(pred, 5, x_t)
    assert DDIMScheduler(DDIMConfig(10, spacing="leading")).set_timesteps(5).tolist() == [8, 6, 4, 2, 0]
    assert s.set_timesteps(1).tolist() == [9]              # one step starts from pure noise
    # add_noise is the forward process
    noise = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    assert s.add_noise(pred, noise, torch.tensor([3]))[0].tolist() == pytest.approx(
        [math.sqrt(abar[3]) * p + math.sqrt(1 - abar[3]) * n for p, n in zip([0.5, 0.25], [1.0, -2.0])])
    # cosine schedule: beta_i = 1 - f((i+1)/T) / f(i/T)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    c = DDIMScheduler(DDIMConfig(num_train_timesteps=20))
    assert float(c.betas[7]) == pytest.approx(1 - f(8 / 20) / f(7 / 20))


def test_config_errors_name_the_field():
    with pytest.raises(CirlabError, match="prediction"):
        PriorConfig(4, prediction="v")
    with pytest.raises(CirlabError, match="beta_schedule"):
        DDIMConfig(beta_schedule="sigmoid")
    assert parse_spec_arg("/a/b,mix=0.25,steps=3") == ("/a/b", {"mix": 0.25, "steps": 3})
    with pytest.raises(CirlabError, match="bad option"):
        parse_spec_arg("/a/b,colour=red")
    with pytest.raises(CirlabError, match="not a int"):
        parse_spec_arg("/a/b,steps=many")


# ---- training, checkpoints and the method on a small world -----------------------------------------

@pytest.fixture(scope="module")
def trained(small_world, tiny_config, tmp_path_factory):
    """Both stages with the quick budget on the small world (shared by the tests below)."""
    from cirlab.backbones import create_backbone
    from cirlab.train import fusion_diff  # noqa: F401  (registers the "fusion-diff" zero-shot trainer)
    from cirlab.train.zeroshot import ZEROSHOT_TRAINERS, ZeroShotContext

    backbone = create_backbone("tiny:random", config=tiny_config)
    out = tmp_path_factory.mktemp("fd")
    ctx = ZeroShotContext(backbone, small_world, out, quick=True, progress=False,
                          options={"fusion-diff": {"adapter": {"triplets": 200}}})
    spec = ZEROSHOT_TRAINERS.get("fusion-diff")(ctx)
    return backbone, spec, out


def test_training_lowers_the_loss(trained):
    _, spec, out = trained
    cfg = json.loads((Path(spec.split(":", 1)[1]) / "config.json").read_text())
    log1, log2 = cfg["training"]["stage1"]["log"], cfg["training"]["stage2"]["log"]
    assert len(log1) >= 2 and log1[-1]["loss"] < 0.8 * log1[0]["loss"], log1
    assert len(log2) >= 2 and log2[-1]["loss"] < log2[0]["loss"] and log2[-1]["denoise"] < log2[0]["denoise"], log2
    # independently: on the same noise draws, the trained adapter denoises the synthetic targets better than
    # the zero-initialised one (= the frozen prior alone), which in turn equals the prior's own loss
    from cirlab.data import load_dataset
    from cirlab.methods.fusion_diff import load_fusion_diff
    from cirlab.train.features import triplet_features
    from cirlab.train.fusion_diff import denoising_loss

    backbone = trained[0]
    ck = load_fusion_diff(spec.split(":", 1)[1], backbone)
    feats = triplet_features(backbone, load_dataset(out / "synthetic"), out / "cache", progress=False)
    pipe = ck.pipeline
    with torch.no_grad():
        fused = pipe.fusion(feats.reference, feats.text)
        trained_loss = denoising_loss(pipe, feats.target, feats.text, torch.Generator().manual_seed(0), fused)
        pipe.adapter.reset_zero()
        zero_loss = denoising_loss(pipe, feats.target, feats.text, torch.Generator().manual_seed(0), fused)
        prior_loss = denoising_loss(pipe, feats.target, feats.text, torch.Generator().manual_seed(0), None)
    assert float(zero_loss) == float(prior_loss)
    assert float(trained_loss) < 0.9 * float(zero_loss)
    # the synthetic triplets are the synth package's, not the world's, and avoid its held-out pairs
    synth = [json.loads(x) for x in (out / "synthetic" / "triplets.jsonl").read_text().splitlines()]
    assert len(synth) == 200 and all(r["id"].startswith("syn-") for r in synth)


def test_synthetic_triplets_respect_heldout(trained, small_world):
    from cirlab.data import load_dataset
    from cirlab.train.fusion_diff import heldout_combos

    _, _, out = trained
    banned = set(heldout_combos(small_world / "train"))
    assert banned
    ds = load_dataset(out / "synthetic")
    for meta in ds.gallery.meta:
        assert not {(o[1], o[0]) for o in meta["objects"]} & banned


def test_checkpoint_round_trip_gives_identical_queries(trained, small_world, tmp_path):
    from cirlab.data import load_dataset
    from cirlab.methods import QueryBatch, create_method
    from cirlab.methods.fusion_diff import load_fusion_diff

    backbone, spec, _ = trained
    path = spec.split(":", 1)[1]
    ck = load_fusion_diff(path, backbone)
    ck.save(tmp_path / "copy")
    from safetensors.torch import load_file

    a_w, b_w = load_file(str(Path(path) / "model.safetensors")), load_file(str(tmp_path / "copy" / "model.safetensors"))
    assert a_w.keys() == b_w.keys() and all(torch.equal(a_w[k], b_w[k]) for k in a_w)
    assert {k.split(".")[0] for k in a_w} == {"prior", "fusion", "adapter"}
    ds = load_dataset(small_world / "test")
    trips = ds.triplets[:7]
    refs = backbone.encode_images([ds.gallery.path(t.reference) for t in trips])
    batch = QueryBatch([t.caption for t in trips], refs)
    a = create_method(spec, backbone).compose(batch)
    b = create_method(f"fusion-diff:{tmp_path / 'copy'}", backbone).compose(batch)
    assert a.shape == (7, backbone.embed_dim) and torch.equal(a, b)
    # the query is normalize((1 - mix) * generated + mix * fused), computed here independently
    m = create_method(f"{spec},mix=0", backbone)
    txt = backbone.encode_texts(batch.texts)
    gen = m.pipeline.sample(txt, m.pipeline.fusion(refs, txt), steps=m.sampling.steps, seed=m.sampling.seed)
    assert torch.allclose(m.compose(batch), gen, atol=1e-6)
    fused = m.pipeline.fusion(refs, txt)
    assert torch.allclose(create_method(f"{spec},mix=1", backbone).compose(batch), fused, atol=1e-6)
    mixed = F.normalize(0.7 * gen + 0.3 * fused, dim=-1)
    assert torch.allclose(create_method(f"{spec},mix=0.3", backbone).compose(batch), mixed, atol=1e-6)
    # the proxy generator returns the generated embedding
    from cirlab.methods.generators import create_proxy_generator, proxy_embeddings

    g = create_proxy_generator(spec, backbone)
    assert g.kind == "embedding" and not g.needs_pixels
    assert torch.allclose(proxy_embeddings(g, batch, backbone), gen, atol=1e-6)
    # a checkpoint for another backbone is refused, naming the directory
    from cirlab.backbones import create_backbone

    with pytest.raises(CirlabError, match="embed_dim"):
        create_method(spec, create_backbone("tiny:world"))


def test_method_end_to_end_through_evaluate_methods(trained, small_world, tmp_path):
    from recall_by_hand import recall_by_hand

    from cirlab.data import load_dataset
    from cirlab.eval.evaluate import evaluate_methods
    from cirlab.methods import create_method

    backbone, spec, _ = trained
    ds = load_dataset(small_world / "test")
    res = evaluate_methods(ds, backbone, ["image", spec, f"{spec},mix=0"], tmp_path / "idx", progress=False)
    assert [r.method for r in res] == ["image", spec, f"{spec},mix=0"]
    n = len([t for t in ds.triplets if t.targets])
    for r in res:
        assert set(r.metrics) >= {"recall@1", "recall@5", "recall@10", "recall@50", "map@10"}
        assert len(r.rankings) == n
        # what evaluate reports is the recall of the method's own queries (one query of slack for near ties);
        # whether the trained method retrieves well is tests/test_learned_methods.py's check
        by_hand = recall_by_hand(create_method(r.method, backbone), ds, backbone)
        assert r.metrics["recall@10"] == pytest.approx(by_hand, abs=100 / n + 0.01), (r.method, by_hand)
    assert res[1].config["method"]["stage"] == 2


def test_resume_continues_to_the_same_weights(small_world, tiny_backbone, tmp_path, monkeypatch):
    from cirlab.methods.fusion_diff import load_fusion_diff
    from cirlab.train import fusion_diff as fd

    data = fd.pair_data(tiny_backbone, small_world / "train", tmp_path / "cache", max_images=64, progress=False)
    cfg = fd.PriorTrainConfig(steps=12, batch_size=16, width=16, depth=2, save_every=5, log_every=4)
    full = fd.train_prior(tiny_backbone, data, cfg, tmp_path / "full", progress=False)
    calls = {"n": 0}
    real = fd.denoising_loss

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(fd, "denoising_loss", crash)
    with pytest.raises(KeyboardInterrupt):
        fd.train_prior(tiny_backbone, data, cfg, tmp_path / "part", progress=False)
    assert json.loads((tmp_path / "part" / "train_state.json").read_text())["step"] == 5
    counted = {"n": 0}

    def count(*a, **k):
        counted["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(fd, "denoising_loss", count)
    fd.train_prior(tiny_backbone, data, cfg, tmp_path / "part", resume=True, progress=False)
    assert counted["n"] == 12 - 5  # it continued from the snapshot at step 5, not from scratch
    a, b = full.pipeline.prior.state_dict(), load_fusion_diff(tmp_path / "part").pipeline.prior.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not (tmp_path / "part" / "train_state.json").exists()
    # stage 2 (with dropout in the fusion module) resumes to the same weights too
    synth = fd.synthetic_triplets(tmp_path / "synth", 40, "world:real", 0, [], 32, progress=False)
    acfg = fd.AdapterTrainConfig(steps=12, batch_size=16, fusion_hidden=16, adapter_hidden=8, adapter_layers=1,
                                 save_every=5, log_every=4)
    whole = fd.train_adapter(tiny_backbone, full, synth, acfg, tmp_path / "a-full", tmp_path / "cache", progress=False)
    calls["n"] = 0
    monkeypatch.setattr(fd, "denoising_loss", crash)
    with pytest.raises(KeyboardInterrupt):
        fd.train_adapter(tiny_backbone, full, synth, acfg, tmp_path / "a-part", tmp_path / "cache", progress=False)
    counted["n"] = 0
    monkeypatch.setattr(fd, "denoising_loss", count)
    fd.train_adapter(tiny_backbone, full, synth, acfg, tmp_path / "a-part", tmp_path / "cache", resume=True,
                     progress=False)
    assert counted["n"] == 12 - 5
    resumed = load_fusion_diff(tmp_path / "a-part").pipeline
    for name in ("fusion", "adapter"):
        a, b = getattr(whole.pipeline, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name


def test_training_commands(small_world, tiny_backbone, tmp_path, monkeypatch, capsys):
    import cirlab.backbones as bbs
    from cirlab.cli import main
    from cirlab.methods.fusion_diff import load_fusion_diff

    monkeypatch.setattr(bbs, "create_backbone", lambda spec, **k: tiny_backbone)
    prior = tmp_path / "prior"
    assert main(["train", "fusion-diff-prior", "--data", str(small_world / "train"), "--out", str(prior), "--steps", "6",
                 "--batch-size", "8", "--width", "16", "--depth", "2", "--max-images", "40", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == f"fusion-diff:{prior}" and load_fusion_diff(prior).pipeline.adapter is None
    model = tmp_path / "model"
    assert main(["train", "fusion-diff", "--prior", str(prior), "--data", str(small_world / "train"), "--out",
                 str(model), "--steps", "6", "--batch-size", "8", "--triplets", "30", "--fusion-hidden", "16",
                 "--adapter-hidden", "8", "--mix", "0.25", "--quiet"]) == 0
    ck = load_fusion_diff(model)
    assert ck.pipeline.adapter is not None and ck.sampling.mix == 0.25
    assert ck.training["stage2"]["triplets"] == 30 and "stage1" in ck.training
    assert main(["train", "fusion-diff", "--out", str(tmp_path / "x")]) == 2  # neither --prior nor --data
    assert "give --prior" in capsys.readouterr().err


def test_plot_and_report(trained, small_world, tmp_path, monkeypatch):
    from cirlab.cli import main
    from cirlab.methods.fusion_diff.plot import pca_2d

    x = torch.randn(30, 5) @ torch.diag(torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1]))
    xy, ratio = pca_2d(x)
    cov = torch.cov(x.T.double())
    evals, evecs = torch.linalg.eigh(cov)
    ref = (x.double() - x.double().mean(0)) @ evecs[:, [-1, -2]]
    assert torch.allclose(xy.abs().double(), ref.abs(), atol=1e-4)
    assert ratio.tolist() == pytest.approx((evals[[-1, -2]] / evals.sum()).tolist(), rel=1e-4)
    backbone, spec, _ = trained
    png, html = tmp_path / "fd.png", tmp_path / "report.html"
    import cirlab.backbones as bbs

    # the CLI creates its backbone from a spec: hand it the test's random tiny backbone
    monkeypatch.setattr(bbs, "create_backbone", lambda spec, **k: backbone)
    rc = main(["plot", "fusion-diff", "--checkpoint", spec, "--data", str(small_world / "test"), "--out", str(png),
               "--queries", "20", "--report", str(html), "--methods", "image"])
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html.read_text()
    assert "<h2>Figures</h2>" in page and "data:image/png;base64," in page and "fusion-diff" in page
