"""Bridges from cirlab to other tools (each needs its own extra; nothing here is imported by cirlab itself)."""
