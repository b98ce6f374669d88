"""Baselines compute the formulas they claim."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cirlab.methods import QueryBatch, create_method, list_methods


def _batch(backbone):
    g = torch.Generator().manual_seed(0)
    ref = F.normalize(torch.randn(3, backbone.embed_dim, generator=g), dim=-1)
    return QueryBatch(["make it red", "add a blue star", "remove the circle"], ref)


def test_image_text_sum_weighted(tiny_backbone):
    b = _batch(tiny_backbone)
    txt = tiny_backbone.encode_texts(b.texts)
    torch.testing.assert_close(create_method("image", tiny_backbone).compose(b), b.reference_features)
    torch.testing.assert_close(create_method("text", tiny_backbone).compose(b), txt)
    torch.testing.assert_close(create_method("sum", tiny_backbone).compose(b),
                               F.normalize(b.reference_features + txt, dim=-1))
    torch.testing.assert_close(create_method("weighted:0.8", tiny_backbone).compose(b),
                               F.normalize(0.2 * b.reference_features + 0.8 * txt, dim=-1))
    assert create_method("weighted:0.8", tiny_backbone).config() == {"name": "weighted", "weight": 0.8}


def test_method_registry_errors(tiny_backbone):
    assert {"image", "text", "sum", "weighted"} <= set(list_methods())
    with pytest.raises(KeyError, match="unknown method 'magic'"):
        create_method("magic", tiny_backbone)
    with pytest.raises(ValueError, match="must be a number"):
        create_method("weighted:abc", tiny_backbone)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        create_method("weighted:2", tiny_backbone)


def test_evaluate_methods_rejects_bad_spec_before_indexing(small_world, tiny_backbone, tmp_path):
    """A typo in a method spec must fail at once, not after the gallery has been encoded."""
    from cirlab.data import load_dataset
    from cirlab.eval.evaluate import evaluate_methods

    ds = load_dataset(small_world / "test")
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        evaluate_methods(ds, tiny_backbone, ["image", "nope"], tmp_path / "idx", progress=False)
    assert not (tmp_path / "idx").exists()
    res = evaluate_methods(ds, tiny_backbone, ["image", "text"], tmp_path / "idx", progress=False)
    assert [r.method for r in res] == ["image", "text"]


def test_retriever_applies_the_methods_own_rescore_depth(tiny_backbone):
    """A method that re-scores declares how deep; the retriever (and so eval, CLI, service) uses it by default."""
    from cirlab.index import create_index
    from cirlab.methods import Method
    from cirlab.retrieval import Retriever

    class Reverse(Method):
        name = "reverse"
        rescore_depth = 4

        def compose(self, batch):
            return batch.reference_features

        def rescore(self, batch, queries, candidate_ids, candidate_scores, candidate_features):
            return -candidate_scores  # the index's order, reversed

    d = tiny_backbone.embed_dim
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(6, d, generator=g), dim=-1)
    index = create_index("exact", d)
    index.add([f"g{i}" for i in range(6)], x)
    r = Retriever(tiny_backbone, index, Reverse(tiny_backbone))
    batch = QueryBatch(["t"], x[:1])
    order = [f"g{i}" for i in torch.argsort(x @ x[0], descending=True).tolist()]
    _, plain = r.search_batch(batch, k=3, rescore_depth=0)
    assert plain[0] == order[:3]
    _, re = r.search_batch(batch, k=3)
    assert re[0] == order[:4][::-1][:3]
