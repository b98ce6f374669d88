"""The fast training paths of Fusion-Diff and PrediCIR against straightforward computations.

Each trainer's step (vectorised batch drawing, one image-tower pass for tokens and feature, reused
prompt tokens, a shared ``silu`` of the prior's condition, fused AdamW) is replayed here the plain way:
a Python loop per sample, the network written out with ``F.linear``, two image-tower passes, one
tokenisation per text and AdamW written out from its formula. Batch draws and crops must be equal
exactly; losses and weights agree to float32 rounding (tolerances below: the fused optimiser and
the prior's shared ``silu`` sum the same terms in another order).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cirlab.errors import CirlabError

LOSS_RTOL = 1e-4     # relative, per logged step
WEIGHT_ATOL = 2e-5   # absolute, after the last step (lr 1e-3: a step moves a weight by up to 1e-3)


def _adamw_reference(params: list[torch.Tensor], lr: float, wd: float, betas=(0.9, 0.999), eps=1e-8):
    """AdamW from its formula (decoupled weight decay, bias-corrected moments), one tensor at a time."""
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    t = {"n": 0}

    def step() -> None:
        t["n"] += 1
        with torch.no_grad():
            for p, (m, v) in zip(params, state):
                if p.grad is None:
                    continue
                p.mul_(1 - lr * wd)
                m.mul_(betas[0]).add_(p.grad, alpha=1 - betas[0])
                v.mul_(betas[1]).addcmul_(p.grad, p.grad, value=1 - betas[1])
                m_hat = m / (1 - betas[0] ** t["n"])
                v_hat = v / (1 - betas[1] ** t["n"])
                p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
                p.grad = None

    return step


# ---- Fusion-Diff -------------------------------------------------------------------------------------

def _pair_data(counts: list[int], dim: int = 8):
    from cirlab.train.fusion_diff import PairData

    rows, n = [], 0
    for c in counts:
        rows.append(list(range(n, n + c)))
        n += c
    g = torch.Generator().manual_seed(1)
    return PairData(F.normalize(torch.randn(len(counts), dim, generator=g), dim=-1),
                    F.normalize(torch.randn(n, dim, generator=g), dim=-1), rows, "test")


def _loop_sample(data, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One image index per sample, then one ``randint`` per image for its caption."""
    idx = torch.randint(0, len(data.image), (n,), generator=gen)
    rows = []
    for i in idx.tolist():
        opts = data.caption_rows[i]
        rows.append(opts[int(torch.randint(0, len(opts), (1,), generator=gen))])
    return data.image[idx], data.text[rows]


@pytest.mark.parametrize("counts", [[1, 2, 3, 4, 5, 6] * 7, [3] * 20, list(range(1, 41))],
                         ids=["mixed", "equal", "lcm-over-2^32"])
def test_pair_sampling_draws_exactly_what_a_per_image_loop_draws(counts):
    data = _pair_data(counts)
    assert (math.lcm(*counts) >= 2 ** 32) == (len(counts) == 40)  # the last case takes the loop fallback
    fast, slow = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for n in (64, 5, 64):  # consecutive draws: the generators stay in step
        a_img, a_txt = data.sample(n, fast)
        b_img, b_txt = _loop_sample(data, n, slow)
        assert torch.equal(a_img, b_img) and torch.equal(a_txt, b_txt)
    assert torch.equal(fast.get_state(), slow.get_state())


def _prior_by_hand(prior, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The prior written out: c = time_mlp(sinusoid(t)) + W_text text; per block
    h += W2 gelu(W1 (LN(h) (1 + scale) + shift)) with (scale, shift) = W_ada silu(c)."""
    w = prior.cfg.width
    half = w // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    ang = t.float()[:, None] * freqs[None]
    temb = torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)
    lin = lambda m, x: F.linear(x, m.weight, m.bias)  # noqa: E731
    c = lin(prior.time_mlp[2], F.silu(lin(prior.time_mlp[0], temb))) + lin(prior.text_proj, text)
    h = lin(prior.in_proj, x_t) + c
    for blk in prior.blocks:
        scale, shift = lin(blk.ada, F.silu(c)).chunk(2, dim=-1)
        z = F.layer_norm(h, (w,)) * (1 + scale) + shift
        h = h + lin(blk.mlp[2], F.gelu(lin(blk.mlp[0], z)))
    return lin(prior.out, F.layer_norm(h, (w,), prior.out_norm.weight, prior.out_norm.bias))


def test_prior_forward_equals_the_written_out_network():
    from cirlab.methods.fusion_diff import EmbeddingPrior, PriorConfig

    torch.manual_seed(0)
    prior = EmbeddingPrior(PriorConfig(dim=16, width=32, depth=3))
    for p in prior.parameters():  # out of the zero/identity init, so every term matters
        p.data.add_(0.05 * torch.randn_like(p))
    x, text = torch.randn(10, 16), torch.randn(10, 16)
    t = torch.randint(0, 1000, (10,))
    assert torch.allclose(prior(x, t, text), _prior_by_hand(prior, x, t, text), rtol=1e-5, atol=1e-5)


def test_prior_training_matches_a_plain_loop():
    """``train_prior`` (fused AdamW, vectorised draws) vs the loop sampler + written-out prior + AdamW formula."""
    from cirlab.methods.fusion_diff import DDIMScheduler, DDIMConfig
    from cirlab.train import fusion_diff as fd

    class _Bb:  # train_prior reads only these from its backbone
        embed_dim, spec = 16, "test"

        def fingerprint(self) -> str:
            return "test"

    data = _pair_data([1, 2, 3] * 20, dim=16)
    cfg = fd.PriorTrainConfig(steps=6, batch_size=24, lr=1e-3, weight_decay=0.01, width=32, depth=2,
                              timesteps=100, log_every=1)
    ck = fd.train_prior(_Bb(), data, cfg, None, progress=False)
    fast_log = [e["loss"] for e in ck.training["stage1"]["log"]]

    ref, _ = fd.new_prior(16, cfg)  # the same initial weights (seeded)
    sched = DDIMScheduler(DDIMConfig(cfg.timesteps, cfg.beta_schedule))
    abar = sched.alphas_cumprod
    step = _adamw_reference(list(ref.parameters()), cfg.lr, cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(cfg.steps):
        img, txt = _loop_sample(data, cfg.batch_size, gen)
        drop = torch.rand(len(txt), generator=gen) < cfg.cond_dropout
        txt = torch.where(drop[:, None], ref.null_text.expand_as(txt), txt)
        x0 = F.normalize(img, dim=-1) * math.sqrt(16)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.timesteps, (len(x0),), generator=gen)
        a = abar[t].float()[:, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = ((_prior_by_hand(ref, x_t, t, txt) - x0) ** 2).mean()
        loss.backward()
        step()
        losses.append(float(loss.detach()))
    assert fast_log == pytest.approx([round(v, 5) for v in losses], rel=LOSS_RTOL, abs=2e-5)
    fast = dict(ck.pipeline.prior.named_parameters())
    for name, p in ref.named_parameters():
        assert torch.allclose(fast[name], p, atol=WEIGHT_ATOL), name
    assert not torch.allclose(fast["out.weight"], fd.new_prior(16, cfg)[0].out.weight, atol=1e-4)  # it trained


def test_precision_is_checked_and_bf16_stays_close_to_fp32():
    from cirlab.train import fusion_diff as fd
    from cirlab.train.optim import autocast

    with pytest.raises(CirlabError, match="precision.*'fp16'"):
        fd.AdapterTrainConfig(precision="fp16")
    cfg = fd.PriorTrainConfig(width=64, depth=2)
    prior, sched = fd.new_prior(32, cfg)
    pipe = fd.FusionDiffPipeline(prior, sched)
    img, txt = torch.randn(64, 32), torch.randn(64, 32)
    out = {}
    for prec in ("fp32", "bf16"):
        with autocast(prec):
            out[prec] = float(fd.denoising_loss(pipe, img, txt, torch.Generator().manual_seed(0)))
    assert out["bf16"] != out["fp32"]  # bf16 really ran
    assert out["bf16"] == pytest.approx(out["fp32"], rel=2e-2)


# ---- PrediCIR ----------------------------------------------------------------------------------------

def test_tiny_tokens_and_feature_in_one_pass_equal_two_passes(tiny_backbone):
    px = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        tokens, feats = tiny_backbone.forward_image_tokens_and_features(px)
        assert torch.equal(tokens, tiny_backbone.forward_image_tokens(px))
        assert torch.equal(feats, tiny_backbone.forward_images(px))
        assert torch.equal(tiny_backbone.forward_image_tokens_and_features(px, normalize=False)[1],
                           tiny_backbone.forward_images(px, normalize=False))


def _plain_losses(trainer, idx, boxes, choice, in_prompt, dropped):
    """PrediCIR's loss the plain way: views and masks box by box, two image-tower passes, one tokenisation
    per text."""
    d, bb, cfg = trainer.data, trainer.backbone, trainer.cfg
    pixels = d.pixels[idx].float()
    views = pixels.clone()
    visible = torch.zeros(len(boxes), d.grid, d.grid, dtype=torch.bool)
    for b, box in enumerate(boxes):
        border = torch.cat([pixels[b, :, 0, :], pixels[b, :, -1, :], pixels[b, :, :, 0], pixels[b, :, :, -1]], dim=1)
        fill = border.median(dim=1).values
        keep = torch.zeros(pixels.shape[2:], dtype=torch.bool)
        keep[box.top * d.patch:(box.top + box.height) * d.patch, box.left * d.patch:(box.left + box.width) * d.patch] = 1
        views[b] = torch.where(keep, pixels[b], fill[:, None, None])
        visible[b, box.top:box.top + box.height, box.left:box.left + box.width] = True
    visible = visible.flatten(1)
    with torch.no_grad():
        src_tokens = bb.forward_image_tokens(views).float()
        src_global = bb.forward_images(views).float()
    action = torch.stack([d.null_action if drop else d.caption_features[i, j]
                          for i, j, drop in zip(idx.tolist(), choice, dropped)])
    pred, pseudo = trainer.model(src_tokens, visible, action, src_global)
    target = F.layer_norm(d.target_tokens[idx].float(), (d.width,))
    per_patch = F.smooth_l1_loss(pred, target, reduction="none").mean(-1)
    weight = torch.where(visible, cfg.visible_weight, 1.0)
    prediction = (per_patch * weight).sum() / weight.sum()
    texts = [trainer.prompts.query_prompt(d.captions[i][j % len(d.captions[i])], bb.placeholder) if use
             else trainer.prompts.image_prompt(bb.placeholder) for i, j, use in zip(idx.tolist(), choice, in_prompt)]
    txt = torch.cat([bb.forward_texts_pseudo(bb.tokenize([x]), pseudo[n:n + 1]) for n, x in enumerate(texts)])
    tgt = F.normalize(d.target_global[idx], dim=-1)
    logits = txt @ tgt.T / cfg.temperature
    gt = torch.arange(len(idx))
    return prediction + cfg.lambda_align * (F.cross_entropy(logits, gt) + F.cross_entropy(logits.T, gt)) / 2


@pytest.mark.parametrize("caption_in_prompt", [0.0, 0.5])
def test_predicir_training_matches_a_plain_loop(small_world, caption_in_prompt):
    from cirlab.backbones import create_backbone
    from cirlab.backbones.tiny import SPECIALS, TinyConfig
    from cirlab.train.predicir import PrediCIRTrainConfig, PrediCIRTrainer, WorldViewData, frozen
    from cirlab.world import CELLS, COLOURS, SHAPES, SIZES

    words = sorted({w for x in list(COLOURS) + list(SHAPES) + list(SIZES) + list(CELLS) for w in x.split()}
                   | {"a", "the", "at", "in", "and", "picture", "of", "that", "photo"})
    cfg_b = TinyConfig(image_size=32, patch_size=8, vision_width=32, vision_depth=1, vision_heads=2, text_width=32,
                       text_depth=1, text_heads=2, embed_dim=16, vocab=SPECIALS + words, text_encoder="clip")
    backbone = create_backbone("tiny:random", config=cfg_b, seed=2)
    data = WorldViewData(small_world / "train", backbone, max_images=48, progress=False)
    cfg = PrediCIRTrainConfig(steps=4, batch_size=16, lr=1e-3, width=32, depth=1, heads=2, fuse_hidden=32,
                              caption_in_prompt=caption_in_prompt, log_every=1)
    fast = PrediCIRTrainer(backbone, data, cfg)
    fast_log = [e["loss"] for e in fast.fit(progress=False)]

    plain = PrediCIRTrainer(backbone, data, cfg)  # the same seeded initial weights
    step = _adamw_reference(list(plain.model.parameters()), cfg.lr, cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    plain.model.train()
    with frozen(backbone):
        for _ in range(cfg.steps):
            idx = torch.randperm(len(data), generator=gen)[:cfg.batch_size]
            loss = _plain_losses(plain, idx, *plain.draw(idx, gen))
            loss.backward()
            step()
            losses.append(float(loss.detach()))
    assert fast_log == pytest.approx([round(v, 5) for v in losses], rel=LOSS_RTOL, abs=2e-5)
    ref = dict(plain.model.named_parameters())
    for name, p in fast.model.named_parameters():
        q = ref[name]
        if name.endswith("self_attn.in_proj_bias"):
            # the key bias adds the same score to every key of a query: softmax cancels it, its gradient is 0
            # up to rounding, and Adam turns that rounding noise into full-size steps of either sign
            w = cfg.width
            p, q = torch.cat([p[:w], p[2 * w:]]), torch.cat([q[:w], q[2 * w:]])
        assert torch.allclose(p, q, atol=WEIGHT_ATOL), name
