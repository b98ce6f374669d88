"""The built-in synthetic CIR world (CSS/CLEVR-style scenes, edits, splits)."""
from .edits import EDIT_KINDS, EditResult, apply_ops, make_edit, one_attribute_away, refer
from .generate import SPLITS, WorldConfig, generate_split, generate_world, write_split
from .scene import CELLS, COLOURS, SHAPES, SIZES, Obj, Scene, Style, caption, random_scene, render

__all__ = ["CELLS", "COLOURS", "EDIT_KINDS", "EditResult", "Obj", "SHAPES", "SIZES", "SPLITS", "Scene", "Style",
           "WorldConfig", "apply_ops", "caption", "generate_split", "generate_world", "make_edit",
           "one_attribute_away", "random_scene", "refer", "render", "write_split"]
