"""CLIP4Cir's fine-tuned CLIP ``{"CLIP": state_dict}`` (OpenAI key names, RN50x4) -> ``openclip:DIR``.

Needs open_clip (``make test-openclip``, ``.venv-openclip``); skipped in the main environment. The
state dict is a randomly initialised RN50x4 in the OpenAI layout; the converted backbone's features
equal those of open_clip's own OpenAI-state-dict builder on the same tensors.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytestmark = pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                                reason="open_clip not installed (run `make test-openclip`)")


def test_fine_tuned_rn50x4_state_dict_loads_through_the_openclip_backend(tmp_path):
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict

    from cirlab.backbones import create_backbone
    from cirlab.zoo.importers import convert

    torch.manual_seed(0)
    model = open_clip.create_model("RN50x4", pretrained=None, force_quick_gelu=True)
    state = {k: v for k, v in model.state_dict().items()}
    del model
    for k in ("visual.layer1.0.conv1.weight", "transformer.resblocks.0.attn.in_proj_weight", "text_projection",
              "visual.attnpool.c_proj.weight", "token_embedding.weight", "ln_final.weight"):
        assert k in state                      # the OpenAI key names
    torch.save({"CLIP": {k: v.half() for k, v in state.items()}}, tmp_path / "clip.pt")   # released in fp16
    out = convert("clip4cir", tmp_path / "clip.pt", tmp_path / "clip")
    bb = create_backbone(f"openclip:{out}")
    assert (bb.embed_dim, bb.token_dim) == (640, 640)

    ref = build_model_from_openai_state_dict({k: v.half().float() for k, v in state.items()},
                                             cast_dtype=None).float().eval()
    img = Image.new("RGB", (300, 260), (200, 40, 90))
    pixels = bb.preprocess_batch([img])
    assert pixels.shape == (1, 3, 288, 288)
    with torch.no_grad():
        # raw projected features, as the Combiner takes them
        want_i = ref.encode_image(pixels)
        assert torch.allclose(bb.encode_images([img], normalize=False), want_i, atol=1e-5, rtol=1e-5)
        ids = open_clip.get_tokenizer("RN50x4")(["a red dress with long sleeves"])
        want_t = ref.encode_text(ids)
        assert torch.allclose(bb.encode_texts(["a red dress with long sleeves"], normalize=False), want_t,
                              atol=1e-5, rtol=1e-5)
        assert torch.allclose(bb.encode_texts(["a red dress with long sleeves"]), F.normalize(want_t, dim=-1),
                              atol=1e-6)
