"""CIR-LoRA (MoE-LoRA in the cross-attention) and the diffusers in-context generator on a tiny random pipeline."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cirlab.synth.cir_lora import CIRLoRAConfig, MoELoRALinear, adapter_parameters, set_condition


def test_router_weights_sum_to_one_and_zero_init_lora_is_the_identity():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    m = MoELoRALinear(base, CIRLoRAConfig(cond_dim=5, experts=3, rank=2))
    cond = torch.randn(4, 5) * 10
    w = m.route(cond)
    assert w.shape == (4, 3) and torch.all(w >= 0)
    assert torch.allclose(w.sum(-1), torch.ones(4), atol=1e-6)
    x = torch.randn(4, 9, 12)
    m.set_condition(cond)
    assert torch.equal(m(x), base(x))                      # B = 0: exactly the base layer
    with torch.no_grad():
        m.lora_b.normal_()
    delta = m(x) - base(x)
    # independent computation of the mixture of low-rank updates
    want = sum(w[:, e, None, None] * (x @ m.lora_a[e].T @ m.lora_b[e].T) for e in range(3)) * m.scaling
    assert torch.allclose(delta, want, atol=1e-5)
    assert not any(p.requires_grad for p in base.parameters())


diffusers = pytest.importorskip("diffusers")


def test_cir_lora_on_a_tiny_diffusers_pipeline_trains_saves_loads_and_generates(tmp_path):
    from PIL import Image

    from cirlab.backbones.tiny import WordTokenizer
    from cirlab.data import load_dataset
    from cirlab.synth import REAL, TemplateScripter, parse_description
    from cirlab.synth.cir_lora import save_adapter
    from cirlab.synth.diffusion import DiffusersGenerator, prompt_for, tiny_components, train_cir_lora
    from cirlab.world import render

    texts = TemplateScripter(seed=2).script(6)
    vocab = WordTokenizer.build_vocab([prompt_for(t) for t in texts])
    comps = tiny_components(vocab, size=16, seed=0)
    lat = torch.randn(2, 4, 8, 16)
    hidden, cond = comps.encode_prompts([prompt_for(t) for t in texts[:2]])
    before = comps.unet(lat, torch.tensor([5, 50]), encoder_hidden_states=hidden).sample
    base_state = {k: v.clone() for k, v in comps.unet.state_dict().items()}
    samples = [(render(parse_description(t.reference), 16, REAL), render(parse_description(t.target), 16, REAL), t)
               for t in texts[:4]]
    # zero steps: injected but untrained -> the UNet's output is unchanged
    adapters, _ = train_cir_lora(comps, samples, CIRLoRAConfig(cond_dim=16, experts=3, rank=2), steps=0,
                                 progress=False)
    n_cross = sum(1 for n, _ in comps.unet.named_modules() if n.endswith("attn2"))
    assert n_cross >= 3 and len(adapters) == 4 * n_cross  # q, k, v, out of every cross-attention layer
    assert all(".attn2." in name for name in adapters)
    set_condition(adapters, cond)
    assert torch.allclose(comps.unet(lat, torch.tensor([5, 50]), encoder_hidden_states=hidden).sample, before)
    # training moves only the adapter
    opt = torch.optim.AdamW(adapter_parameters(adapters), lr=1e-2)
    noise = torch.randn_like(lat)
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(comps.unet(lat, torch.tensor([5, 50]), encoder_hidden_states=hidden).sample,
                                            noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = comps.unet(lat, torch.tensor([5, 50]), encoder_hidden_states=hidden).sample
    assert not torch.allclose(after, before)
    for k, v in comps.unet.state_dict().items():
        if "lora_" not in k and "router" not in k:
            assert torch.equal(v, base_state[k.replace(".base.", ".")]), k
    save_adapter(adapters, CIRLoRAConfig(cond_dim=16, experts=3, rank=2), tmp_path / "adapter")
    # a fresh pipeline (same seed) + the saved adapter computes the same thing
    gen = DiffusersGenerator(tiny_components(vocab, size=16, seed=0), tmp_path / "adapter", steps=3)
    set_condition(gen.adapters, cond)
    assert torch.allclose(gen.comps.unet(lat, torch.tensor([5, 50]), encoder_hidden_states=hidden).sample, after,
                          atol=1e-5)
    root = gen.generate(texts[:3], tmp_path / "syn", progress=False)
    ds = load_dataset(root)
    assert len(ds.triplets) == 3
    with Image.open(ds.gallery.path(ds.triplets[0].targets[0])) as im:
        assert im.size == (16, 16)
    # the diffusion-loss training loop on stitched (reference | target) samples runs
    comps2 = tiny_components(vocab, size=16, seed=1)
    _, losses = train_cir_lora(comps2, samples, CIRLoRAConfig(cond_dim=16, experts=2, rank=2), steps=3,
                               progress=False)
    assert len(losses) == 3 and all(l == l and l > 0 for l in losses)
