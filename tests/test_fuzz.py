"""Property-based inputs for the data, image and benchmark-file readers.

The invariant for every generated input: a ``CirlabError`` naming what is wrong (exit 2 from the CLI)
or a correct result (checked against an independent reading of the same input), never another
exception, and never a changed input file. Hypothesis runs derandomized (the same cases on every run,
no example database), so CI is deterministic; ``CIRLAB_FUZZ_EXAMPLES`` multiplies the number of cases.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cirlab.cli import main
from cirlab.errors import CirlabError

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("CIRLAB_TEST_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))
SCALE = float(os.environ.get("CIRLAB_FUZZ_EXAMPLES", "1"))


def fuzz(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


def digest(paths) -> dict[str, str]:
    out = {}
    for p in paths:
        p = Path(p)
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        out.update({str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    return out


def cli(*argv: str) -> tuple[int, str]:
    """Run the CLI in-process: (exit code, stderr); any exception other than SystemExit propagates."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


# ---- dataset files -------------------------------------------------------------------------------
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=True),
                        st.text(max_size=8))
json_value = st.recursive(json_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                            max_size=3), max_leaves=6)
IDS = ["a", "b", "c", "d", "", " ", "0", "a/../b", "é"]


@st.composite
def gallery_row(draw) -> bytes:
    kind = draw(st.sampled_from(["ok", "ok", "ok", "field", "json", "bytes", "blank"]))
    row = {"id": draw(st.sampled_from(IDS) | st.integers(0, 3)),
           "path": draw(st.sampled_from(["img0.png", "img1.png", "missing.png", "", "sub", "../x.png"]))}
    if kind == "field":
        row[draw(st.sampled_from(["id", "path", "caption", "meta"]))] = draw(json_value)
    if kind == "bytes":
        return draw(st.binary(max_size=20)).replace(b"\n", b"")
    if kind == "blank":
        return b"   "
    text = json.dumps(row, ensure_ascii=False)
    if kind == "json":
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", "}", "{", ",", "\x00"])) + text[cut:]
    return text.encode("utf-8")


@st.composite
def triplet_row(draw) -> bytes:
    row: dict = {"id": draw(st.sampled_from(["q1", "q2", "q3", "", 7])),
                 "reference": draw(st.sampled_from(IDS)), "caption": draw(st.text(max_size=10)),
                 "targets": draw(st.lists(st.sampled_from(IDS), max_size=3))}
    if draw(st.booleans()):
        row[draw(st.sampled_from(["id", "reference", "caption", "targets", "meta"]))] = draw(json_value)
    if draw(st.integers(0, 9)) == 0:
        row.pop(draw(st.sampled_from(sorted(row))))
    return json.dumps(row).encode()


def independent_gallery(lines: list[bytes], root: Path) -> list[tuple[str, Path]] | None:
    """The gallery the format spec describes, or None when it says the file is invalid."""
    out, seen = [], set()
    for raw in lines:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        if not isinstance(obj, dict) or "id" not in obj or "path" not in obj:
            return None
        i, p = obj["id"], obj["path"]
        if isinstance(i, bool) or not isinstance(i, (str, int)) or not str(i).strip():
            return None
        if not isinstance(p, str) or not p.strip() or str(i) in seen:
            return None
        seen.add(str(i))
        out.append((str(i), root / p))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    out = {}
    for n in range(2):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
        out[f"img{n}.png"] = buf.getvalue()
    return out


@fuzz(150)
@given(gallery=st.lists(gallery_row(), max_size=6), triplets=st.lists(triplet_row(), max_size=4))
def test_dataset_files(images, gallery, triplets):
    from cirlab.data import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, data in images.items():
            (root / name).write_bytes(data)
        (root / "sub").mkdir()
        (root / "gallery.jsonl").write_bytes(b"\n".join(gallery) + b"\n")
        (root / "triplets.jsonl").write_bytes(b"\n".join(triplets) + b"\n")
        before = digest([root])
        expected = independent_gallery(gallery, root)
        try:
            ds = load_dataset(root)
        except CirlabError as e:
            assert str(root) in str(e)  # the file (or directory) at fault is named
            ds = None
        assert digest([root]) == before
        if ds is not None:
            assert expected is not None, "an invalid gallery.jsonl was accepted"
            assert list(zip(ds.gallery.ids, ds.gallery.paths)) == expected
            assert all(p.is_file() for p in ds.gallery.paths)
            for t in ds.triplets:
                assert t.id.strip() and t.reference in ds.gallery and all(x in ds.gallery for x in t.targets)
        elif expected is not None and all(p.is_file() for _, p in expected):
            # a valid gallery of existing files: only the triplets may be at fault
            with pytest.raises(CirlabError, match="triplets.jsonl"):
                load_dataset(root)


@fuzz(12)
@given(gallery=st.lists(gallery_row(), min_size=1, max_size=4))
def test_index_cli_on_fuzzed_galleries(images, gallery):
    """`cirlab index` on the same inputs: exit 0 with every image indexed, or exit 2 naming the fault."""
    from cirlab.index import load_index

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "g"
        root.mkdir()
        for name, data in images.items():
            (root / name).write_bytes(data)
        (root / "sub").mkdir()
        (root / "gallery.jsonl").write_bytes(b"\n".join(gallery) + b"\n")
        before = digest([root])
        code, err = cli("index", str(root), "--out", str(Path(tmp) / "idx"), "--feature-cache", "off")
        assert code in (0, 2), err
        assert digest([root]) == before
        expected = independent_gallery(gallery, root)
        if code == 0:
            index, _ = load_index(Path(tmp) / "idx")
            assert expected is not None and index.ids == [i for i, _ in expected]
        else:
            assert err.startswith("cirlab: error:") or "cirlab: error:" in err


# ---- images --------------------------------------------------------------------------------------
MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "CMYK", "F"]


@st.composite
def image_file(draw) -> tuple[bytes, tuple[int, int] | None, str]:
    """(file bytes, the size when the bytes are an intact image, a label)."""
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode if mode != "I;16" else "I")
    buf = io.BytesIO()
    try:
        im.save(buf, fmt)
    except (OSError, ValueError, KeyError):
        im.convert("RGB").save(buf, "PNG")
        fmt = "PNG"
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "garbage", "empty", "header-only"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip":
        pos = draw(st.integers(0, len(data) - 1))
        data = data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1:]
    elif damage == "garbage":
        data = draw(st.binary(min_size=1, max_size=64))
    elif damage == "empty":
        data = b""
    elif damage == "header-only":
        data = data[:16]
    return data, ((w, h) if damage == "none" else None), f"{fmt}/{mode}/{damage}"


@pytest.fixture(scope="module")
def tiny(tiny_config):
    from cirlab.backbones import create_backbone

    return create_backbone("tiny:random", config=tiny_config)


@fuzz(200)
@given(case=image_file())
def test_images(tiny, case):
    from cirlab.backbones.base import load_image
    from cirlab.imaging import DEFAULT_BOUNDS

    data, size, label = case
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "x.img"
        p.write_bytes(data)
        too_long = size is not None and max(size) / min(size) > DEFAULT_BOUNDS.max_aspect
        try:
            im = load_image(p)
        except CirlabError as e:
            assert str(p) in str(e), label
            assert size is None or too_long, f"an intact {label} image was refused: {e}"
            im = None
        assert not (too_long and im is not None), f"a {size} image passed the aspect bound"
        if im is not None:
            assert im.mode == "RGB"
            if size is not None:
                assert im.size == size, label
            feats = tiny.encode_images([p])
            assert feats.shape == (1, tiny.embed_dim) and bool(feats.isfinite().all())
        assert p.read_bytes() == data


# ---- benchmark prediction files ------------------------------------------------------------------
needs_bench = pytest.mark.skipif(not BENCH.is_dir(), reason=f"real benchmark annotations not found at {BENCH}")


@pytest.fixture(scope="module")
def cirr_val():
    from cirlab.benchmarks import get_benchmark

    split = get_benchmark("cirr").load(BENCH / "cirr", "val", need_gallery=False)
    names = list(json.loads((BENCH / "cirr/image_splits/split.rc2.val.json").read_text()))
    rng = random.Random(0)
    base = {"version": "rc2", "metric": "recall"}
    for t in split.parts["all"].triplets:
        row = rng.sample(names, 50)
        if rng.random() < 0.4 and t.targets[0] not in row:
            row[rng.randrange(50)] = t.targets[0]
        base[t.id] = row
    return split, names, base


MUTATIONS = ["none", "drop-key", "extra-key", "short", "dup-id", "foreign-id", "int-ids", "value", "reference-first",
             "header", "truncate-text", "bad-utf8", "not-object", "dup-key"]


MUST_ACCEPT = {"none", "reference-first"}
MUST_REJECT = {"drop-key", "extra-key", "short", "dup-id", "truncate-text", "bad-utf8", "not-object", "dup-key"}


def naive_cirr_recall(split, obj, k: int) -> float:
    trips = split.parts["all"].triplets
    hits = 0
    for t in trips:
        ranked = [str(x) for x in obj[t.id] if str(x) != t.reference]
        hits += t.targets[0] in ranked[:k]
    return 100.0 * hits / len(trips)


@needs_bench
@fuzz(30)
@given(mutation=st.sampled_from(MUTATIONS), which=st.integers(0, 4180), extra=json_value)
def test_cirr_prediction_files(cirr_val, mutation, which, extra):
    from cirlab.benchmarks.offline import score_prediction_files

    split, names, base = cirr_val
    obj = dict(base)
    qid = split.parts["all"].triplets[which % len(split.parts["all"].triplets)].id
    t = next(x for x in split.parts["all"].triplets if x.id == qid)
    if mutation == "drop-key":
        obj.pop(qid)
    elif mutation == "extra-key":
        obj["99999999"] = obj[qid]
    elif mutation == "short":
        obj[qid] = obj[qid][:10]
    elif mutation == "dup-id":
        obj[qid] = obj[qid][:49] + obj[qid][:1]
    elif mutation == "foreign-id":
        obj[qid] = ["not-an-image"] + obj[qid][1:]
    elif mutation == "int-ids":
        obj[qid] = list(range(50))
    elif mutation == "value":
        obj[qid] = extra
    elif mutation == "reference-first":
        obj[qid] = [t.reference] + [x for x in obj[qid] if x != t.reference][:49]
    elif mutation == "header":
        obj["version"] = extra
    text = json.dumps(obj)
    data = text.encode()
    if mutation == "truncate-text":
        data = data[: len(data) // 3]
    elif mutation == "bad-utf8":
        data = data[:100] + b"\xff\xfe" + data[100:]
    elif mutation == "not-object":
        data = json.dumps([obj]).encode()
    elif mutation == "dup-key":
        data = data[:-1] + b', "' + qid.encode() + b'": ' + json.dumps(obj[qid]).encode() + b"}"
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "recall.json"
        p.write_bytes(data)
        try:
            metrics, _ = score_prediction_files(split, p)
        except CirlabError as e:
            assert str(p) in str(e) or "predictions rejected" in str(e)
            metrics = None
        assert p.read_bytes() == data
    if mutation in MUST_ACCEPT:
        assert metrics is not None, f"a valid file was rejected ({mutation})"
    if mutation in MUST_REJECT:
        assert metrics is None, f"a broken file was scored ({mutation})"
    if metrics is not None:
        for k in (1, 5, 10, 50):
            assert metrics[f"recall@{k}"] == pytest.approx(naive_cirr_recall(split, json.loads(data), k))


@pytest.fixture(scope="module")
def circo_val():
    from cirlab.benchmarks import get_benchmark

    split = get_benchmark("circo").load(BENCH / "circo", "val", need_gallery=False)
    sub = json.loads((BENCH / "circo/submission_examples/submission_val.json").read_text())
    return split, sub


def naive_circo_map(split, obj, k: int) -> float:
    total = 0.0
    trips = split.parts["all"].triplets
    for t in trips:
        ranked = [str(int(x)) for x in obj[t.id]][:k]
        gt = set(t.targets)
        hits, ap = 0, 0.0
        for i, x in enumerate(ranked, 1):
            if x in gt:
                hits += 1
                ap += hits / i
        total += ap / min(len(gt), k)
    return 100.0 * total / len(trips)


@needs_bench
@fuzz(40)
@given(mutation=st.sampled_from(["none", "padded", "strings", "drop-key", "short", "dup-after-padding", "value",
                                 "float-ids", "negative"]),
       which=st.integers(0, 219), extra=json_value)
def test_circo_prediction_files(circo_val, mutation, which, extra):
    from cirlab.benchmarks.offline import score_prediction_files

    split, sub = circo_val
    obj = {k: list(v) for k, v in sub.items()}
    qid = sorted(obj)[which % len(obj)]
    if mutation == "padded":
        obj = {k: [f"{x:012d}" for x in v] for k, v in obj.items()}
    elif mutation == "strings":
        obj[qid] = [str(x) for x in obj[qid]]
    elif mutation == "drop-key":
        obj.pop(qid)
    elif mutation == "short":
        obj[qid] = obj[qid][:3]
    elif mutation == "dup-after-padding":
        obj[qid] = obj[qid][:49] + [f"{obj[qid][0]:012d}"]
    elif mutation == "value":
        obj[qid] = extra
    elif mutation == "float-ids":
        obj[qid] = [float(x) for x in obj[qid]]
    elif mutation == "negative":
        obj[qid] = [-x for x in obj[qid]]
    data = json.dumps(obj).encode()
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "pred.json"
        p.write_bytes(data)
        try:
            metrics, _ = score_prediction_files(split, p)
        except CirlabError:
            metrics = None
        assert p.read_bytes() == data
    if mutation in ("none", "padded", "strings"):
        assert metrics is not None, mutation
    if metrics is not None:
        for k in (5, 10, 25, 50):
            assert metrics[f"map@{k}"] == pytest.approx(naive_circo_map(split, obj, k))


@needs_bench
def test_eval_predictions_cli_exit_codes(tmp_path, cirr_val):
    split, _, base = cirr_val
    good = tmp_path / "good.json"
    good.write_text(json.dumps(base))
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"version": "rc2", "metric": "recall", "1": [\xff')
    args = ["eval-predictions", "--benchmark", "cirr", "--split", "val", "--data-root", str(BENCH / "cirr"),
            "--predictions"]
    assert cli(*args, str(good))[0] == 0
    code, err = cli(*args, str(bad))
    assert code == 2 and str(bad) in err
