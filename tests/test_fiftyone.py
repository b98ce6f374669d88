"""FiftyOne integration with the real FiftyOne, a real mongod and the real App (run by `make test-fiftyone`).

One mongod (started by cirlab, stopped by its pid) and one App serve the whole module; FiftyOne's config,
database and HOME live under the module's temp dir. The export is compared with cirlab's own rankings file
and with metrics computed here from it; the similarity backend with `cirlab search` on the same index; the
App is opened on 127.0.0.1 in Debian Chromium (screenshot: test-artifacts/fiftyone-app.png).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("fiftyone") is None:
    pytest.skip("FiftyOne is not in this environment: its tests run in .venv-fiftyone (make test-fiftyone)",
                allow_module_level=True)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
BACKBONE = "tiny:world"
METHODS = ["image", "sum", "weighted:0.2"]


@pytest.fixture(scope="module")
def fo_env(tmp_path_factory):
    """FiftyOne configured under a temp dir, with a mongod on 127.0.0.1 that cirlab starts; stopped by pid."""
    root = tmp_path_factory.mktemp("fiftyone")
    old = {k: os.environ.get(k) for k in ("HOME", "CIRLAB_FIFTYONE_HOME", "FIFTYONE_DATABASE_URI")}
    os.environ["HOME"] = str(root / "user")
    os.environ["CIRLAB_FIFTYONE_HOME"] = str(root / "home")
    from cirlab.integrations.fiftyone import env

    home = env.configure(root / "home")
    server = env.MongoServer.start(home)
    os.environ["FIFTYONE_DATABASE_URI"] = server.uri
    assert server.owned and env.pid_alive(server.pid)
    try:
        import fiftyone as fo

        assert fo.config.do_not_track is True and fo.config.default_app_address == "127.0.0.1"
        assert fo.config.database_uri == server.uri
        yield home, server
    finally:
        server.stop()
        assert not env.pid_alive(server.pid), f"mongod {server.pid} still running"
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def run(small_world, tmp_path_factory):
    """`cirlab eval --out` on the small world's test split: results.json + rankings beside it."""
    from cirlab.cli import main

    out = tmp_path_factory.mktemp("run")
    assert main(["eval", "--data", str(small_world / "test"), "--backbone", BACKBONE, "--methods", ",".join(METHODS),
                 "--index-dir", str(out / "index"), "--out", str(out / "results.json")]) == 0
    return out


@pytest.fixture(scope="module")
def exported(fo_env, run, small_world):
    """The run exported with `cirlab export fiftyone` (the CLI, against the module's database)."""
    import fiftyone as fo

    from cirlab.cli import main
    from cirlab.integrations.fiftyone.export import run_name

    assert main(["export", "fiftyone", "--data", str(small_world / "test"), "--results", str(run / "results.json"),
                 "--examples", "2"]) == 0
    return run_name(run / "results.json")


def datasets(name: str):
    """The exported pair, loaded afresh (a re-export replaces the dataset objects)."""
    import fiftyone as fo

    return name, fo.load_dataset(f"{name}-gallery"), fo.load_dataset(f"{name}-queries")


def cirlab_rankings(run: Path) -> dict[str, dict[str, list[str]]]:
    results = json.loads((run / "results.json").read_text())
    return json.loads((run / results["rankings"]).read_text())["rankings"]


def test_export_round_trip(exported, run, small_world):
    from cirlab.data import load_dataset

    name, gallery, queries = datasets(exported)
    data = load_dataset(small_world / "test")
    results = json.loads((run / "results.json").read_text())
    ranks = cirlab_rankings(run)
    trips = [t for t in data.triplets if t.targets]

    assert len(gallery) == len(data.gallery) and len(queries) == len(trips)
    assert sorted(gallery.values("image_id")) == sorted(data.gallery.ids)
    by_query = {s.query_id: s for s in queries}
    assert set(by_query) == {t.id for t in trips}
    for t in trips[:5]:
        s = by_query[t.id]
        assert (s.reference_id, s.text, s.targets, s.kind) == (t.reference, t.caption, list(t.targets),
                                                                t.meta.get("kind", "all"))
        assert Path(s.filepath) == data.gallery.path(t.reference).resolve()

    for entry in results["results"]:
        method, field = entry["method"], "m_" + re.sub(r"[^0-9a-z]+", "_", entry["method"]).strip("_")
        r10, ap10 = [], []
        for t in trips:
            doc = by_query[t.id][field]
            assert doc["ranking"] == ranks[method][t.id]
            # per-query values computed here from the rankings file
            hits = [n for n, g in enumerate(ranks[method][t.id], 1) if g in set(t.targets)]
            assert doc["rank"] == (hits[0] if hits else None)
            assert doc["recall_at_10"] == float(bool(hits) and hits[0] <= 10)
            ap = sum((j + 1) / n for j, n in enumerate(h for h in hits if h <= 10)) / min(len(t.targets), 10)
            assert doc["ap_at_10"] == pytest.approx(ap)
            r10.append(doc["recall_at_10"])
            ap10.append(doc["ap_at_10"])
        # ... and their means are cirlab's own overall metrics
        assert 100 * np.mean(r10) == pytest.approx(entry["metrics"]["recall@10"], abs=0.006)
        assert 100 * np.mean(ap10) == pytest.approx(entry["metrics"]["map@10"], abs=0.006)

        fails = queries.load_saved_view(f"failures-{field[2:]}")
        want = {t.id for t in trips if not set(t.targets) & set(ranks[method][t.id][:10])}
        assert set(fails.values("query_id")) == want

    # the ranked view of an example query lists the gallery in cirlab's order
    t = trips[0]
    view = gallery.load_saved_view(f"ranked-sum-{re.sub(r'[^0-9a-z]+', '_', t.id.lower()).strip('_')}")
    assert view.values("image_id") == ranks["sum"][t.id]

    # the embeddings are the index's vectors
    from cirlab.index import load_index

    index, _ = load_index(run / "index")
    ids, embs = gallery.values(["image_id", "emb_tiny_world"])
    np.testing.assert_allclose(np.stack(embs), index.vectors(ids).numpy(), atol=1e-6)


def test_reexport_is_idempotent_and_foreign_datasets_are_kept(exported, run, small_world):
    import fiftyone as fo

    from cirlab.errors import CirlabError
    from cirlab.integrations.fiftyone import export_run

    name, gallery, queries = datasets(exported)
    before = sorted(fo.list_datasets())
    views = sorted(queries.list_saved_views())
    n_gallery, n_queries = len(gallery), len(queries)
    again = export_run(run / "results.json", small_world / "test", examples=2, progress=False)
    assert again.names == (f"{name}-gallery", f"{name}-queries")
    assert sorted(fo.list_datasets()) == before
    assert (len(again.gallery), len(again.queries)) == (n_gallery, n_queries)
    assert sorted(again.gallery.list_brain_runs()) == ["cir_image", "cir_sum", "cir_weighted_0_2"]
    assert sorted(again.queries.list_saved_views()) == views

    foreign = fo.Dataset("someone-queries", persistent=True)
    foreign.add_sample(fo.Sample(filepath="/nonexistent.png", note="keep me"))
    with pytest.raises(CirlabError, match="someone-queries"):
        export_run(run / "results.json", small_world / "test", name="someone", similarity=False, progress=False)
    assert fo.load_dataset("someone-queries").first()["note"] == "keep me"
    assert not fo.dataset_exists("someone-gallery")


def cli_search(index: Path, reference: str, text: str, method: str, k: int, capsys) -> list[str]:
    from cirlab.cli import main

    capsys.readouterr()
    assert main(["search", "--index", str(index), "--reference", reference, "--text", text, "--method", method,
                 "-k", str(k), "--json"]) == 0
    return [r["id"] for r in json.loads(capsys.readouterr().out)["results"]]


def test_backend_equals_cirlab_search(exported, run, small_world, capsys):
    from cirlab.data import load_dataset

    _, gallery, _ = datasets(exported)
    data = load_dataset(small_world / "test")
    sample_of = dict(zip(*gallery.values(["image_id", "id"])))
    for t in data.triplets[:3]:
        for method in ("sum", "weighted:0.2"):
            key = "cir_" + re.sub(r"[^0-9a-z]+", "_", method).strip("_")
            want = cli_search(run / "index", t.reference, t.caption, method, 6, capsys)
            by_image_id = gallery.sort_by_similarity(f"{t.reference} | {t.caption}", k=6, brain_key=key)
            by_sample_id = gallery.sort_by_similarity(f"{sample_of[t.reference]} | {t.caption}", k=6, brain_key=key)
            assert by_image_id.values("image_id") == want
            assert by_sample_id.values("image_id") == want
            assert t.reference not in want


def test_backend_text_vector_and_id_queries(exported, run):
    import fiftyone.brain as fob

    from cirlab.backbones import create_backbone
    from cirlab.index import load_index

    _, gallery, _ = datasets(exported)
    index, _ = load_index(run / "index")
    ids = index.ids
    vectors = index.vectors(ids)
    backbone = create_backbone(BACKBONE)

    def top(q: torch.Tensor, k: int) -> list[str]:
        scores = (vectors @ torch.nn.functional.normalize(q.float(), dim=-1)).numpy()
        return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]

    text = "a big red circle"
    with torch.no_grad():
        want_text = top(backbone.encode_texts([text])[0], 5)
    assert gallery.sort_by_similarity(text, k=5, brain_key="cir_sum").values("image_id") == want_text

    vec = np.random.default_rng(0).standard_normal(index.dim).astype(np.float32)
    assert gallery.sort_by_similarity(vec, k=5, brain_key="cir_sum").values("image_id") == top(torch.from_numpy(vec), 5)

    first = gallery.first()
    got = gallery.sort_by_similarity(first.id, k=4, brain_key="cir_sum").values("image_id")
    assert got == top(vectors[ids.index(first.image_id)], 4) and got[0] == first.image_id

    # the string backend name, through fob.compute_similarity, on a dataset without cirlab ids
    plain = gallery.limit(25).clone()
    plain.delete_sample_field("image_id")
    fob.compute_similarity(plain, backend="cirlab", backbone=BACKBONE, method="image", embeddings=False,
                           brain_key="plain")
    sub_ids, paths = plain.values(["id", "filepath"])
    with torch.no_grad():
        feats = torch.nn.functional.normalize(backbone.encode_images(paths).float(), dim=-1)
    scores = (feats @ torch.nn.functional.normalize(torch.from_numpy(vec), dim=-1)).numpy()
    assert plain.sort_by_similarity(vec, k=3, brain_key="plain").values("id") == [
        sub_ids[i] for i in np.argsort(-scores, kind="stable")[:3]]
    results = plain.load_brain_results("plain")
    index_dir = Path(results.config.index_dir)
    assert index_dir.is_dir() and results.total_index_size == 25
    plain.delete_brain_run("plain")
    results.cleanup()
    assert not index_dir.exists()

    # cirlab's compute_similarity replaces its own earlier run of a key, index directory included
    from cirlab.integrations.fiftyone import compute_similarity

    first = Path(compute_similarity(plain, backbone=BACKBONE, method="image", brain_key="again").config.index_dir)
    second = Path(compute_similarity(plain, backbone=BACKBONE, method="image", brain_key="again").config.index_dir)
    assert first != second and second.is_dir() and not first.exists()
    assert plain.list_brain_runs() == ["again"]
    plain.delete()


@pytest.fixture(scope="module")
def app(exported, run, fo_env):
    """`cirlab fiftyone --launch` in a subprocess (the module's database); stopped by its pid, the App server too."""
    from cirlab.integrations.fiftyone import env

    home, server = fo_env
    port = env.free_port()
    log = home / "cli-app.log"
    fh = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "cirlab", "fiftyone", "--results", str(run / "results.json"),
                             "--no-export", "--launch", "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 240
        url = None
        while url is None and time.time() < deadline and proc.poll() is None:
            m = re.search(r"FiftyOne App: (http://127\.0\.0\.1:\d+/datasets/\S+)", log.read_text())
            url = m.group(1) if m else time.sleep(0.5)
        assert url, f"the App did not start:\n{log.read_text()}"
        app_pid = json.loads((home / "app.json").read_text())["pid"]
        yield url, port, app_pid
    finally:
        app_state = home / "app.json"
        app_pid = json.loads(app_state.read_text())["pid"] if app_state.is_file() else None
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)
        fh.close()
        if app_pid is not None and env.pid_alive(app_pid):
            env.stop_pid(app_pid)
            pytest.fail(f"the App server {app_pid} outlived `cirlab fiftyone`")
        assert env.pid_alive(server.pid)  # the module's mongod was not the CLI's to stop


def object_ids(obj) -> list[str]:
    """The ObjectId strings of the first list of ids in a Mongo pipeline (order kept)."""
    if isinstance(obj, list) and obj and all(isinstance(x, dict) and set(x) == {"$oid"} for x in obj):
        return [x["$oid"] for x in obj]
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else []
    for child in children:
        found = object_ids(child)
        if found:
            return found
    return []


def test_app_sort_route_uses_the_backend(app, exported, run, small_world, capsys):
    import httpx

    from cirlab.data import load_dataset

    url, port, _ = app
    _, gallery, _ = datasets(exported)
    t = load_dataset(small_world / "test").triplets[1]
    want = cli_search(run / "index", t.reference, t.caption, "sum", 5, capsys)
    body = {"dataset": gallery.name, "view": [], "filters": {}, "subscription": "test",
            "extended": {"query": f"{t.reference} | {t.caption}", "k": 5, "brain_key": "cir_sum"}}
    r = httpx.post(f"http://127.0.0.1:{port}/sort", json=body, timeout=120)
    assert r.status_code == 200, r.text
    image_of = dict(zip(*gallery.values(["id", "image_id"])))
    assert [image_of[i] for i in object_ids(r.json())] == want


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: run .ci/install-system.sh")
def test_app_shows_the_query_dataset(app, exported, tmp_path_factory):
    import playwright.sync_api as playwright_api

    from cirlab.netsafe import playwright_chromium_kwargs

    url, _, _ = app
    _, _, queries = datasets(exported)
    shots = tmp_path_factory.mktemp("artifacts")
    outside: list[str] = []
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(**playwright_chromium_kwargs(shots / "profile", str(CHROMIUM)),
                                                        viewport={"width": 1400, "height": 900})
        try:
            page = context.new_page()
            page.on("request", lambda req: outside.append(req.url)
                    if not re.match(r"(http://127\.0\.0\.1[:/]|data:|blob:)", req.url) else None)
            page.goto(url)
            page.get_by_text(f"{len(queries)} samples").first.wait_for(timeout=120_000)
            # a method's failure view, opened by its saved-view slug
            fails = len(queries.load_saved_view("failures-sum"))
            assert 0 < fails < len(queries)
            page.goto(url + "?view=failures-sum")
            page.get_by_text(f"{fails} samples").first.wait_for(timeout=60_000)
            dismiss = page.get_by_text("Dismiss")
            if dismiss.count():
                dismiss.first.click()
            page.wait_for_timeout(3000)
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "fiftyone-app.png"
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")
            assert shot.stat().st_size > 10_000
        finally:
            context.close()
    assert not [u for u in outside if "segment" in u or "google-analytics" in u or "googletagmanager" in u], outside
