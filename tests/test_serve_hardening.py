"""Hardening of ``cirlab serve``: image bounds before decoding (every backbone's preprocessing), the
expensive-method gate and queue, who may call (Host allow-list, token, cross-origin refusal), stalled
connections, the connection bound, JSON for every error."""
from __future__ import annotations

import io
import os
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from cirlab.backbones import create_backbone
from cirlab.backbones.base import load_image
from cirlab.backbones.encoding import encode_images
from cirlab.imaging import ImageBounds, ImageError, draft_scale, image_size, open_image
from cirlab.index import build_index
from cirlab.retrieval import Retriever
from cirlab.serve import ServeLimits, create_app
from cirlab.serve.access import ServeAccess, exposure_warning
from cirlab.serve.timeouts import guarded_protocol
from serve_helpers import bomb_png, check_ranking, cli_server, expected_scores, live_server, png_bytes

pytest_plugins = ["serve_helpers"]  # the world and retriever fixtures

LIMITS = ServeLimits(max_upload_bytes=256 * 1024, max_pixels=1_000_000, max_text_chars=80, max_k=20, default_k=5,
                     decode_budget_mb=16, body_timeout_s=1.0, body_deadline_s=5.0)
TOKEN = "a-test-token-0123456789"


@pytest.fixture(scope="module")
def client(retriever):
    with TestClient(create_app(retriever, limits=LIMITS), base_url="http://localhost") as c:
        yield c


@pytest.fixture()
def no_decoding(monkeypatch):
    """Any pixel decoding fails the test: what is refused must be refused from the header."""
    def refuse(self):  # noqa: ANN001
        raise AssertionError(f"pixels of a {self.size} image were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# ---- item: pixel and aspect-ratio bounds, from the header, for every preprocessing --------------
def test_extreme_aspect_upload_is_refused_before_decoding(client, world, no_decoding):
    strip = bomb_png(1, 1_000_000)  # 1,000,000 pixels: within max_pixels, but a 1e6:1 strip
    r = client.post("/search", data={"text": "red"}, files={"image": ("strip.png", strip, "image/png")})
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == ("image 'strip.png': image is 1x1000000, an aspect ratio of 1e+06:1; the limit is "
                                  "20:1 (crop it first)")


@pytest.mark.parametrize("size", [(16, 20_000), (8, 200_000)])
def test_library_loading_refuses_strips_before_decoding(tmp_path, tiny_backbone, size, no_decoding):
    """The backbones' own loading (``load_image``, ``encode_images`` with its loader) refuses the strips that
    made ``conse:`` preprocessing allocate 390 MB and 7.2 GB, naming the file and the limit."""
    path = tmp_path / "strip.png"
    path.write_bytes(bomb_png(*size))
    w, h = size
    want = f"image '{path}': image is {w}x{h}, an aspect ratio of {h / w:.4g}:1; the limit is 20:1"
    with pytest.raises(ImageError, match=want.replace("+", r"\+").replace("(", r"\(")):
        load_image(path)
    with pytest.raises(ImageError, match="the limit is 20:1"):
        tiny_backbone.encode_images([str(path)])
    with pytest.raises(ImageError, match="the limit is 20:1"):
        encode_images(tiny_backbone, [str(path)], cache=False, progress=False, num_workers=0, device=None)
    with pytest.raises(ImageError, match="the limit is 20:1"):  # an already decoded image, before resizing
        load_image(Image.new("L", size))


def test_pixel_bound_and_what_passes(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("RGB", (300, 20), (9, 8, 7)).save(path)  # 15:1 passes
    im = open_image(path)
    assert im.size == (300, 20) and im.mode == "RGB" and im.getpixel((5, 5)) == (9, 8, 7) and im.format == "PNG"
    assert image_size(path) == 6000
    with pytest.raises(ImageError, match="300x20 = 6000 pixels; the limit is 5000 pixels") as e:
        open_image(path, ImageBounds(max_pixels=5000))
    assert e.value.kind == "too-large"
    with pytest.raises(ImageError, match="aspect ratio of 15:1; the limit is 10:1"):
        open_image(path, ImageBounds(max_aspect=10))
    with pytest.raises(ImageError, match="is a directory"):
        open_image(tmp_path)


def test_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    rng = np.random.default_rng(0)
    pixels = np.repeat(np.repeat(rng.integers(0, 255, (75, 100, 3), dtype=np.uint8), 20, 0), 20, 1)  # 2000x1500
    path = tmp_path / "big.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    assert draft_scale(2000, 1500, 1_000_000) == 2 and draft_scale(2000, 1500, 200_000) == 4 and draft_scale(2000, 1500, 100_000) == 8
    half = open_image(path, ImageBounds(draft_pixels=1_000_000))
    assert half.size == (1000, 750)  # DCT scaling: never decoded at 2000x1500
    full = np.asarray(open_image(path), dtype=np.float32)
    assert full.shape == (1500, 2000, 3)
    pooled = full.reshape(750, 2, 1000, 2, 3).mean((1, 3))
    assert np.abs(np.asarray(half, dtype=np.float32) - pooled).mean() < 4  # the same picture, at half size


# ---- item: JSON for every error -------------------------------------------------------------------
def test_corrupt_gallery_image_gives_a_json_error(retriever, world, tmp_path):
    target = world.gallery.ids[2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(png_bytes(world.gallery.path(target))[:200])
    paths = {**retriever.paths, target: str(broken)}
    app = create_app(Retriever(retriever.backbone, retriever.index, "sum", paths), limits=LIMITS)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        r = c.get(f"/images/{target}", params={"size": 32})
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert r.json()["detail"].startswith(f"gallery image {target!r}: the PNG data is truncated or corrupt")
        assert str(tmp_path) not in r.text  # no server paths
        ok = c.get(f"/images/{world.gallery.ids[3]}", params={"size": 32})
        assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"


def test_unexpected_failure_is_json_without_traceback(retriever, world, monkeypatch):
    app = create_app(retriever, limits=LIMITS)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        monkeypatch.setattr(app.state.service, "gallery_ids", lambda: 1 / 0)
        r = c.get("/gallery")
        assert r.status_code == 500 and r.json() == {
            "detail": "internal server error (ZeroDivisionError); the server log has the details"}
        assert c.get("/nope").json() == {"detail": "Not Found"}
        bad_k = c.post("/search", data={"reference_id": world.gallery.ids[0], "text": "red", "k": "abc"})
        assert bad_k.status_code == 422
        assert bad_k.json()["detail"].startswith("k: Input should be a valid integer") and "'abc'" in bad_k.text


# ---- item: expensive methods off unless listed, and in their own bounded queue ------------------------
def test_expensive_methods_are_off_unless_listed(client, retriever, world):
    h = client.get("/health").json()
    assert "searle-oti" not in {m["spec"] for m in h["methods"]}
    assert h["unavailable_methods"]["searle-oti"] == ("expensive per query: offered only when listed "
                                                      "(--methods ...,searle-oti)")
    r = client.post("/search", data={"reference_id": world.gallery.ids[0], "text": "red", "method": "searle-oti"})
    assert r.status_code == 400 and "not offered" in r.json()["detail"]
    app = create_app(retriever, methods=["sum", "searle-oti:2"], limits=LIMITS)
    assert {m: app.state.service.is_expensive(m) for m in app.state.service.methods} == {
        "sum": False, "searle-oti:2": True}


def test_cheap_query_is_not_queued_behind_expensive_ones(retriever, world):
    """Three searle-oti searches are held (one computing, two queued); a fourth is refused 503 (the queue holds
    two); a `sum` search is answered, correctly, while all three are still held."""
    limits = ServeLimits(max_k=20, slow_workers=1, slow_queue=2)
    app = create_app(retriever, methods=["sum", "searle-oti:2"], limits=limits)
    slow = app.state.service.retriever("searle-oti:2").method
    entered, release = threading.Event(), threading.Event()
    real = slow.compose

    nice: list[int] = []

    def held_compose(batch):  # noqa: ANN001
        nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        entered.set()
        release.wait(30)
        return real(batch)

    slow.compose = held_compose
    answers: dict[int, httpx.Response] = {}

    def one(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            answers[n] = http.post("/search", data={"reference_id": world.gallery.ids[n], "text": "make it red",
                                                    "k": "3", "method": "searle-oti:2"})

    with live_server(app) as url, httpx.Client(base_url=url, timeout=20) as http:
        threads = [threading.Thread(target=one, args=(n,)) for n in range(3)]
        try:
            threads[0].start()
            assert entered.wait(20), "the expensive search never reached the model"
            for t in threads[1:]:
                t.start()
            deadline = time.time() + 20
            while http.get("/health").json()["searches"]["expensive_pending"] < 2 and time.time() < deadline:
                time.sleep(0.02)
            assert http.get("/health").json()["searches"]["expensive_pending"] == 2
            full = http.post("/search", data={"reference_id": world.gallery.ids[5], "text": "red",
                                              "method": "searle-oti:2"})
            assert full.status_code == 503 and full.headers["retry-after"] == "5"
            assert full.json()["detail"].startswith("busy: 2 searches with expensive methods are already waiting")
            ref, text = world.gallery.ids[4], "make the circle blue"
            cheap = http.post("/search", data={"reference_id": ref, "text": text, "k": "4", "method": "sum"})
            assert not answers, "the expensive searches must still be held"
            assert cheap.status_code == 200, cheap.text
            img = F.normalize(retriever.index.vectors([ref])[0], dim=-1)
            q = F.normalize(img + retriever.backbone.encode_texts([text])[0], dim=-1)
            check_ranking(cheap.json()["results"], expected_scores(retriever, q), 4, exclude={ref})
        finally:
            release.set()
            for t in threads:
                t.join(60)
    assert sorted(answers) == [0, 1, 2]
    assert all(a.status_code == 200 and a.json()["method"] == "searle-oti:2" for a in answers.values())
    assert nice and set(nice) == {os.getpriority(os.PRIO_PROCESS, 0) + 10}  # their thread yields the CPU to others


def test_small_upload_is_not_queued_behind_large_ones(retriever, world, monkeypatch):
    """Three uploads over large_pixels are held (one decoding, two waiting for the large lane); a small upload is
    decoded and answered meanwhile, correctly."""
    import cirlab.serve.app as app_module

    limits = ServeLimits(max_k=20, max_pixels=1_000_000, large_pixels=100_000, decode_workers=1)
    entered, release = threading.Event(), threading.Event()
    real = app_module.decode_upload

    def held_decode(data, limits_, name):  # noqa: ANN001, ANN202
        if "large" in name:
            entered.set()
            release.wait(30)
        return real(data, limits_, name)

    monkeypatch.setattr(app_module, "decode_upload", held_decode)
    large = io.BytesIO()
    Image.new("RGB", (500, 400), (200, 30, 30)).save(large, "PNG")
    answers: dict[int, httpx.Response] = {}

    def one(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            answers[n] = http.post("/search", data={"text": "red", "k": "3"},
                                   files={"image": ("large.png", large.getvalue(), "image/png")})

    with live_server(create_app(retriever, limits=limits)) as url, httpx.Client(base_url=url, timeout=20) as http:
        threads = [threading.Thread(target=one, args=(n,)) for n in range(3)]
        try:
            for t in threads:
                t.start()
            assert entered.wait(20), "the large upload was never decoded"
            small = world.gallery.paths[6]
            r = http.post("/search", data={"text": "make it blue", "k": "4", "method": "image"},
                          files={"image": ("small.png", png_bytes(small), "image/png")})
            assert not answers, "the large uploads must still be held"
            assert r.status_code == 200, r.text
            want = retriever.backbone.encode_images([small])[0]
            check_ranking(r.json()["results"], expected_scores(retriever, want), 4)
        finally:
            release.set()
            for t in threads:
                t.join(60)
    assert [answers[n].status_code for n in range(3)] == [200, 200, 200]


# ---- item: who may call --------------------------------------------------------------------------
def test_host_allow_list_refuses_dns_rebinding(retriever, world):
    app = create_app(retriever, limits=LIMITS)
    with TestClient(app, base_url="http://attacker.example:8000") as c:
        r = c.get("/health")
        assert r.status_code == 400 and r.json()["detail"].startswith("Host 'attacker.example:8000' is not served")
    for host in ("localhost:8000", "127.0.0.1", "[::1]:9000"):
        with TestClient(app, base_url=f"http://{host}") as c:
            assert c.get("/health").status_code == 200, host
    access = ServeAccess.for_bind("10.1.2.3", extra_hosts=("cir.example.org",))
    with TestClient(create_app(retriever, limits=LIMITS, access=access), base_url="https://cir.example.org") as c:
        assert c.get("/health").status_code == 200
    assert access.host_allowed("10.1.2.3:8000") and not access.host_allowed("10.1.2.4")


@pytest.mark.parametrize("headers", [{"origin": "http://attacker.example"}, {"origin": "null"},
                                     {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
                                     {"origin": "http://localhost:9999"}])
def test_cross_origin_posts_are_refused(client, world, headers):
    form = {"reference_id": world.gallery.ids[0], "text": "red"}
    r = client.post("/search", data=form, headers=headers)  # urlencoded: what an HTML form posts
    assert r.status_code == 403 and r.json()["detail"].startswith("cross-origin POST refused"), r.text
    r = client.post("/search", files={"text": (None, "red"), "reference_id": (None, world.gallery.ids[0])},
                    headers=headers)  # multipart, the other form encoding
    assert r.status_code == 403
    same = client.post("/search", data=form, headers={"origin": "http://localhost", "sec-fetch-site": "same-origin"})
    assert same.status_code == 200 and len(same.json()["results"]) == LIMITS.default_k
    assert client.get("/health", headers=headers).status_code == 200  # reads are not state-changing


def test_token_is_required_when_set(retriever, world):
    app = create_app(retriever, limits=LIMITS, access=ServeAccess(token=TOKEN))
    form = {"reference_id": world.gallery.ids[0], "text": "red"}
    with TestClient(app, base_url="http://localhost") as c:
        for path in ("/health", "/gallery", f"/images/{world.gallery.ids[0]}", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
            assert r.json()["detail"].startswith("this server needs a token")
        assert c.post("/search", data=form).status_code == 401
        assert c.post("/search", data=form, headers={"authorization": f"Bearer {TOKEN}x"}).status_code == 401
        assert c.post("/search", data=form, headers={"authorization": f"Basic {TOKEN}"}).status_code == 401
        assert c.get("/health", headers={"cookie": f"cirlab_token={TOKEN[:-1]}"}).status_code == 401
        assert c.post("/search", data=form, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get(f"/images/{world.gallery.ids[0]}", headers={"cookie": f"cirlab_token={TOKEN}"}).status_code == 200
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200  # the page asks for it


def test_exposure_warning():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert exposure_warning(host, None) is None
    loud = exposure_warning("0.0.0.0", None)
    assert "listening on 0.0.0.0" in loud and "no token is set" in loud and "TLS reverse proxy" in loud
    quieter = exposure_warning("192.168.1.5", TOKEN)
    assert "no token" not in quieter and "TLS reverse proxy" in quieter


# ---- item: stalled connections and the connection bound ---------------------------------------------
def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=20)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def test_stalled_headers_and_bodies_are_dropped_and_extra_connections_refused(retriever, world):
    app = create_app(retriever, limits=LIMITS)
    with live_server(app, http=guarded_protocol(1.0, 3)) as url:
        stalled_body = _raw(url)
        stalled_body.sendall(b"POST /search HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 100000\r\n"
                             b"content-type: multipart/form-data; boundary=xyz\r\n\r\n--xyz\r\n")
        stalled_headers = _raw(url)
        stalled_headers.sendall(b"POST /search HTTP/1.1\r\nhost: 127.0")
        idle = _raw(url)
        time.sleep(0.3)
        extra = _raw(url)  # the fourth open connection
        reply = _read_all(extra)
        assert reply.startswith(b"HTTP/1.1 503 ") and b'"detail": "busy: 3 connections are open' in reply
        t0 = time.monotonic()
        body_reply = _read_all(stalled_body)  # answered 408 and closed
        assert body_reply.startswith(b"HTTP/1.1 408 ") and b"request body stalled" in body_reply
        assert b"application/json" in body_reply
        assert _read_all(stalled_headers) == b""  # closed without a request to answer
        assert _read_all(idle) == b""
        assert time.monotonic() - t0 < 15
        for s in (stalled_body, stalled_headers, idle, extra):
            s.close()
        with httpx.Client(base_url=url, timeout=20) as http:  # still serving
            r = http.post("/search", data={"reference_id": world.gallery.ids[1], "text": "red", "k": "3"})
            assert r.status_code == 200 and len(r.json()["results"]) == 3


def test_decoded_uploads_stay_within_the_memory_budget(retriever, world):
    """Twelve concurrent 1000x1000 uploads (4 MB each when decoded, counted at 4 bytes a pixel) against a budget of
    16 MiB: at most four are held decoded at once; all are answered correctly."""
    buf = io.BytesIO()
    y, x = np.mgrid[0:1000, 0:1000]
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    app = create_app(retriever, limits=LIMITS)
    answers: list[httpx.Response] = []

    def one() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            answers.append(http.post("/search", data={"text": "red", "k": "3", "method": "image"},
                                     files={"image": ("big.png", data, "image/png")}))

    with live_server(app) as url:
        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        with httpx.Client(base_url=url, timeout=20) as http:
            h = http.get("/health").json()["searches"]
    assert len(answers) == 12 and all(a.status_code == 200 for a in answers)
    assert h["decoded_bytes_in_flight"] == 0
    assert 4 * 1_000_000 <= h["decoded_bytes_peak"] <= 16 * 1024 * 1024
    want = retriever.backbone.encode_images([Image.open(io.BytesIO(data))])[0]
    check_ranking(answers[0].json()["results"], expected_scores(retriever, want), 3)


def test_cli_token_sources(tmp_path, monkeypatch):
    import argparse

    from cirlab.cli.serve import read_token
    from cirlab.errors import CirlabError

    def args(token=None, token_file=None):  # noqa: ANN001, ANN202
        return argparse.Namespace(token=token, token_file=token_file)

    monkeypatch.delenv("CIRLAB_SERVE_TOKEN", raising=False)
    assert read_token(args()) is None
    assert read_token(args(TOKEN)) == TOKEN
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert read_token(args(token_file=f)) == TOKEN
    monkeypatch.setenv("CIRLAB_SERVE_TOKEN", TOKEN)
    assert read_token(args()) == TOKEN
    with pytest.raises(CirlabError, match=r"the token is given twice \(--token and \$CIRLAB_SERVE_TOKEN\)"):
        read_token(args(TOKEN))
    monkeypatch.delenv("CIRLAB_SERVE_TOKEN")
    with pytest.raises(CirlabError, match="at least 16 characters"):
        read_token(args("short"))
    f.write_text("\n")
    with pytest.raises(CirlabError, match="the first line is empty"):
        read_token(args(token_file=f))


# ---- item: memory of concurrent large uploads, in a real `cirlab serve` process -----------------------
def _status_kib(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing")


#: documented in docs/serve.md: during a burst the resident size grows by at most the decode budget plus
#: PEAK_SLACK_MIB; once the burst is over it is back within AFTER_SLACK_MIB of where it started
PEAK_SLACK_MIB = 64
AFTER_SLACK_MIB = 32


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the resident size from /proc")
def test_rss_returns_after_32_concurrent_large_uploads(small_world, world, tmp_path):
    """32 clients upload a 2000x2000 PNG at once to `cirlab serve --decode-budget-mb 64`: the peak resident size
    stays within the budget (+ slack) of the idle size, and the size returns to within the slack afterwards."""
    index_dir = tmp_path / "index"
    build_index(create_backbone("tiny:random"), world.gallery, index_dir, progress=False)
    y, x = np.mgrid[0:2000, 0:2000]
    buf = io.BytesIO()
    Image.fromarray(np.stack([x % 256, y % 256, (x // 8 + y // 8) % 256], -1).astype(np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    budget_mib = 64
    with cli_server(index_dir, tmp_path / "server.log", "--decode-budget-mb", str(budget_mib)) as (url, proc):
        def upload() -> httpx.Response:
            with httpx.Client(base_url=url, timeout=120) as http:
                return http.post("/search", data={"text": "make it red", "k": "3", "method": "image"},
                                 files={"image": ("big.png", data, "image/png")})

        assert upload().status_code == 200  # warm: thread pools and lazy imports in place
        time.sleep(0.5)
        idle = _status_kib(proc.pid, "VmRSS")
        answers: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: answers.append(upload())) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        peak = _status_kib(proc.pid, "VmHWM")
        time.sleep(0.5)
        after = _status_kib(proc.pid, "VmRSS")
        health = httpx.get(f"{url}/health", timeout=10).json()["searches"]
    assert len(answers) == 32 and all(a.status_code == 200 for a in answers), [a.text for a in answers][:2]
    assert health["decoded_bytes_peak"] <= budget_mib * 1024 * 1024 and health["decoded_bytes_in_flight"] == 0
    print(f"RSS idle {idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, after {after / 1024:.0f} MiB")
    assert (peak - idle) / 1024 <= budget_mib + PEAK_SLACK_MIB
    assert (after - idle) / 1024 <= AFTER_SLACK_MIB
