"""Shared fixtures: a small generated world and a small random tiny backbone."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The test models are tiny: one intra-op thread is faster than two, and on a busy 2-core machine two
# spinning OpenMP threads made them ~30x slower (measured by several test modules that set it alone).
torch.set_num_threads(1)
pytest.register_assert_rewrite("serve_helpers")  # its checks are shared by the service tests


@pytest.fixture(scope="session", autouse=True)
def _session_feature_cache(tmp_path_factory):
    """Caches of fixtures wider than one test live under the session's temp dir, never in ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CIRLAB_CACHE", str(tmp_path_factory.mktemp("cirlab-cache")))
    mp.delenv("CIRLAB_FEATURE_CACHE", raising=False)
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _test_feature_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own feature cache, so counts of encoded images do not depend on other tests."""
    monkeypatch.setenv("CIRLAB_FEATURE_CACHE", str(tmp_path_factory.mktemp("features") / "features.sqlite"))


EQUAL_REGISTERS = {"procedural": 1.0, "describing": 1.0, "casual": 1.0}


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """A miniature world (all splits) on disk; returns its root. Exact edits (``drift=0``), the three registers
    in equal shares and every describing text at the config's detail (``brief=0``): the world on which the tests'
    bars (learned methods, backbones, rewriters) were measured; the default world's drift, register shares and
    brief describing texts have their own tests (``test_world*.py``)."""
    from cirlab.world import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(seed=3, drift=0.0, registers=EQUAL_REGISTERS, brief=0.0).small(60)
    generate_world(root, cfg, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_config():
    from cirlab.backbones.tiny import SPECIALS, TinyConfig
    from cirlab.world import COLOURS, SHAPES, SIZES, CELLS

    words = sorted({w for x in list(COLOURS) + list(SHAPES) + list(SIZES) + list(CELLS) for w in x.split()}
                   | {"a", "the", "at", "in", "and", "add", "remove", "make", "move", "to"})
    return TinyConfig(image_size=32, patch_size=8, vision_width=32, vision_depth=1, vision_heads=2, text_width=32,
                      text_depth=1, text_heads=2, embed_dim=16, vocab=SPECIALS + words)


@pytest.fixture()
def tiny_backbone(tiny_config):
    from cirlab.backbones import create_backbone

    return create_backbone("tiny:random", config=tiny_config)
