"""Commands that need no model start without importing torch (behaviour, not timing: the timing is
``benchmarks/startup.py``), and the registries still list every backbone and method."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_bench_protocols import BENCH

# Runs each command through the real CLI entry point in one fresh interpreter, then reports which of
# the heavy modules got imported.
DRIVER = r'''
import json, sys
from cirlab.cli import main
out = {}
for argv in json.loads(sys.argv[1]):
    try:
        rc = main(argv)
    except SystemExit as e:  # --help, --version
        rc = e.code
    out[" ".join(argv)] = rc
print(json.dumps({"rc": out, "torch": "torch" in sys.modules}))
'''


def _run(commands: list[list[str]]) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stdout


def test_help_version_and_listings_do_not_import_torch():
    from cirlab.backbones import BACKBONES
    from cirlab.methods import METHODS

    got, out = _run([["--help"], ["--version"], ["backbones"], ["methods"], ["index", "--help"]])
    assert got["rc"] == {"--help": 0, "--version": 0, "backbones": 0, "methods": 0, "index --help": 0}
    assert got["torch"] is False
    # every registered kind and method is listed, with its help (registered = what importing their modules gives)
    for name in ["tiny", "hf", "openclip", "conse"]:
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    for name in METHODS.names():
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    assert "fusion-diff" in METHODS.names() and "ip-cir" in METHODS.names() and "searle-oti" in METHODS.names()
    assert BACKBONES.get("tiny").__module__ == "cirlab.backbones.tiny"  # declared by name, registered on use


def test_method_registry_declarations_match_what_the_modules_register():
    """The declared names are exactly the names the method modules register, with the same help shown."""
    import importlib
    import pkgutil

    import cirlab.methods as methods
    from cirlab.methods import METHODS

    declared = dict(METHODS.describe())
    for m in pkgutil.walk_packages(methods.__path__, methods.__name__ + "."):
        importlib.import_module(m.name)
    assert set(METHODS._factories) == set(declared) and METHODS.describe() == declared


@pytest.mark.skipif(not BENCH.is_dir(), reason=f"real benchmark annotations not found at {BENCH}")
def test_benchmark_file_commands_do_not_import_torch(tmp_path):
    sub = BENCH / "cirr" / "submission_examples"
    got, out = _run([
        ["validate-submission", "--benchmark", "cirr", "--split", "test1", "--data-root", str(BENCH / "cirr"),
         str(sub / "test1_pred_ranks_recall.json"), str(sub / "test1_pred_ranks_recall_subset.json")],
    ])
    assert list(got["rc"].values()) == [0] and "OK" in out and got["torch"] is False
    # eval-predictions on a val file: a ranking for every query (the first 50 val images each)
    caps = json.loads((BENCH / "cirr/captions/cap.rc2.val.json").read_text())
    names = list(json.loads((BENCH / "cirr/image_splits/split.rc2.val.json").read_text()))[:51]
    preds = {"version": "rc2", "metric": "recall",
             **{str(q["pairid"]): [n for n in names if n != q["reference"]][:50] for q in caps}}
    (tmp_path / "p.json").write_text(json.dumps(preds))
    got, out = _run([["eval-predictions", "--benchmark", "cirr", "--split", "val", "--data-root",
                      str(BENCH / "cirr"), "--predictions", str(tmp_path / "p.json"), "--json"]])
    assert list(got["rc"].values()) == [0] and got["torch"] is False
    assert 0 <= json.loads(out.strip().splitlines()[0])["recall@50"] <= 100
