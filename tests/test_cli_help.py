"""`--help` shows every option's default, and long runs say how long they will take before they do."""
from __future__ import annotations

import argparse
import io
import re

from cirlab.cli import build_parser
from cirlab.train import estimate as est


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_with_a_default_shows_it():
    checked = 0
    for p in _parsers(build_parser()):
        text = " ".join(p.format_help().split())
        for a in p._actions:
            if not a.option_strings or a.default in (None, argparse.SUPPRESS) or isinstance(a.default, bool):
                continue
            checked += 1
            if "default" in (a.help or "").lower():
                continue
            shown = str(a.default)
            assert f"default: {shown}" in text, f"{p.prog} {a.option_strings[0]}: default {shown!r} not in --help"
    assert checked > 100                   # every command's options were seen


def test_run_estimate_measures_after_the_first_step(monkeypatch):
    clock = iter([100.0, 106.0])          # after step 1, then after step 3: 2 steps in 6 s
    monkeypatch.setattr(est.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    e = est.RunEstimate("train x", 1310, "10 epochs x 131", "--max-steps N for fewer", measure=2, stream=out)
    for _ in e.wrap(range(5)):
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == "train x: 1,310 steps (10 epochs x 131); --max-steps N for fewer"
    assert lines[1] == "train x: 3 s/step measured over steps 2-3 on this machine -> ~66 min in all (~65 min left)"
    assert len(lines) == 2 and e.seconds_per_step == 3.0
    assert [est.format_duration(s) for s in (42, 3000, 9000)] == ["42 s", "50 min", "2.5 h"]
