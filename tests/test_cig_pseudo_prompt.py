"""CIG's generator prompted with pseudo-token embeddings: the pipeline's own text encoder encodes
"a photo of $ that {caption}" with $'s embedding replaced by phi(reference feature)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cirlab.errors import CirlabError
from cirlab.methods import QueryBatch
from cirlab.methods.generators import create_proxy_generator
from cirlab.methods.textual_inversion.phi import Checkpoint, Phi, PhiConfig
from cirlab.methods.textual_inversion.prompts import get_templates
from test_cig import tiny_sd_pipeline

pytest.importorskip("diffusers")


def test_pseudo_token_prompt_embeddings_drive_the_pipeline(tiny_backbone, tmp_path):
    pipe_dir = tiny_sd_pipeline(tmp_path / "sd")
    torch.manual_seed(0)
    phi = Phi(PhiConfig(tiny_backbone.embed_dim, 16, 32, 2, "gelu", 0.0)).eval()   # -> the pipeline's 16-d tokens
    Checkpoint("lincir", phi, get_templates("world"), "", "").save(tmp_path / "phi")
    gen = create_proxy_generator(f"diffusers:{pipe_dir},steps=2,guidance=1.0,size=16,phi={tmp_path / 'phi'}",
                                 tiny_backbone)
    feats = torch.nn.functional.normalize(torch.randn(2, tiny_backbone.embed_dim, generator=torch.Generator()
                                                      .manual_seed(1)), dim=-1)
    batch = QueryBatch(["is red", "has a dot"], feats)
    got = gen.prompt_embeds(batch)

    # independently: give an unused vocabulary entry the pseudo token and encode the plain text with it
    pipe = gen.pipeline
    tok, te = pipe.tokenizer, pipe.text_encoder
    spare = tok.convert_tokens_to_ids("9</w>")
    emb = te.get_input_embeddings().weight
    saved = emb[spare].clone()
    want = []
    with torch.no_grad():
        tokens = phi(feats)
        for n, cap in enumerate(batch.texts):
            emb[spare] = tokens[n]
            ids = tok([f"a photo of 9 that {cap}"], padding="max_length", max_length=tok.model_max_length,
                      truncation=True, return_tensors="pt").input_ids
            want.append(te(ids)[0][0])
        emb[spare] = saved
    assert torch.allclose(got, torch.stack(want), atol=1e-5)
    # the reference's token matters: other features, other embeddings
    assert (gen.prompt_embeds(QueryBatch(batch.texts, feats.flip(0))) - got).abs().max() > 1e-4

    # the images are the pipeline's for those embeddings, same seed
    imgs = gen.generate(batch, seed=5)
    direct = pipe(prompt_embeds=torch.stack(want), num_inference_steps=2, guidance_scale=1.0, height=16, width=16,
                  generator=torch.Generator().manual_seed(5), output_type="pil").images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(imgs, direct))
    assert gen.config()["phi"] == str(tmp_path / "phi")

    # the official LinCIR phi takes raw projected features: the generator then asks for them
    raw = Phi(PhiConfig(tiny_backbone.embed_dim, 16, 32, 2, "gelu", 0.0, raw_input=True)).eval()
    raw.load_state_dict(phi.state_dict())
    Checkpoint("lincir", raw, get_templates("world"), "", "").save(tmp_path / "raw-phi")
    graw = create_proxy_generator(f"diffusers:{pipe_dir},steps=2,guidance=1.0,size=16,phi={tmp_path / 'raw-phi'}",
                                  tiny_backbone)
    assert graw.needs_raw and not gen.needs_raw
    norms = torch.tensor([3.0, 0.5])
    scaled = QueryBatch(batch.texts, feats, reference_norms=norms)
    with torch.no_grad():
        want_raw = gen.prompt_embeds(QueryBatch(batch.texts, feats * norms[:, None]))
    assert torch.allclose(graw.prompt_embeds(scaled), want_raw, atol=1e-5)
    assert (want_raw - got).abs().max() > 1e-4

    Checkpoint("lincir", Phi(PhiConfig(tiny_backbone.embed_dim, 8, 32, 2, "gelu", 0.0)), get_templates("world"),
               "", "").save(tmp_path / "phi8")
    with pytest.raises(CirlabError, match="maps to 8-d tokens but the pipeline's text encoder embeds tokens in 16"):
        create_proxy_generator(f"diffusers:{pipe_dir},phi={tmp_path / 'phi8'}", tiny_backbone)
