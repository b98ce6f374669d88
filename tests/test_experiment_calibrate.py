"""The calibration's checks: each expected ordering read from the right method and register, with both sides."""
from __future__ import annotations

from cirlab.experiments.calibrate import checks


def _res(overall: float, describing: float) -> dict:
    return {"metrics": {"recall@10": overall}, "registers": {"describing": {"recall@10": describing}}}


def test_checks_compare_the_named_methods_and_flag_the_required_ones():
    split = {"image": _res(13.0, 14.0), "text": _res(30.0, 40.0), "sum": _res(26.0, 29.0),
             "weighted:0.7": _res(35.0, 41.0), "pic2word:/x/pic2word": _res(33.0, 42.0),
             "searle:/x/searle": _res(25.0, 44.0), "lincir:/x/lincir": _res(12.0, 38.0)}
    got = {c["check"]: c for c in checks(split, "recall@10")}
    assert (got["text > image on describing queries"]["left"], got["text > image on describing queries"]["right"]) \
        == (40.0, 14.0)
    assert got["pic2word > sum"]["holds"] and got["pic2word > image"]["holds"]
    assert not got["searle > sum"]["holds"] and got["searle > image"]["holds"]  # 25 vs 26, 25 vs 13
    assert not got["lincir > image"]["holds"] and (got["lincir > image"]["left"], got["lincir > image"]["right"]) \
        == (12.0, 13.0)
    # the baselines' own orderings are reported, never required
    assert not got["sum > text overall"]["holds"] and got["sum > image overall"]["holds"]
    assert got["text > image overall"]["holds"]
    required = {c["check"] for c in got.values() if c["required"]}
    assert required == {"text > image on describing queries", *(f"{m} > {b}" for m in ("pic2word", "searle", "lincir")
                                                                   for b in ("image", "sum"))}
    # a method that was not run is not checked
    del split["lincir:/x/lincir"]
    assert not any(c["check"].startswith("lincir") for c in checks(split, "recall@10"))
