"""Layering: library packages import downwards only (cli -> experiments -> train / synth / methods ...)."""
from __future__ import annotations

import ast
from pathlib import Path

import cirlab

SRC = Path(cirlab.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """Absolute names of the cirlab modules ``path`` imports (relative imports resolved)."""
    pkg = path.relative_to(SRC.parent).with_suffix("").parts
    pkg = pkg[:-1] if pkg[-1] != "__init__" else pkg[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(pkg[: len(pkg) - node.level + 1]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m == "cirlab" or m.startswith("cirlab.")}


def _offenders(package: str, forbidden: str) -> list[str]:
    return sorted(f"{p.relative_to(SRC)} imports {m}" for p in (SRC / package).rglob("*.py")
                  for m in _imports(p) if m == forbidden or m.startswith(forbidden + "."))


def test_import_resolution_sees_relative_imports() -> None:
    # the checker itself: the CLI's demo module imports cirlab.cli.common relatively
    assert "cirlab.cli.common" in _imports(SRC / "cli" / "demo.py")
    assert "cirlab.experiments.daig" in _imports(SRC / "cli" / "experiment_daig.py")


def test_no_library_module_imports_the_cli() -> None:
    packages = [p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file() and p.name != "cli"]
    assert "experiments" in packages and "benchmarks" in packages
    assert [o for pkg in packages for o in _offenders(pkg, "cirlab.cli")] == []


def test_synth_and_methods_do_not_import_train_or_experiments() -> None:
    for pkg in ("synth", "methods", "backbones", "index", "data", "world", "eval"):
        assert _offenders(pkg, "cirlab.train") == [], pkg
        assert _offenders(pkg, "cirlab.experiments") == [], pkg


def test_train_does_not_import_experiments() -> None:
    assert _offenders("train", "cirlab.experiments") == []
