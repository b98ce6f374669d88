"""Property-based HTTP requests against the service (Hypothesis, derandomised: the same cases on every run).

The invariant: every answer is either a JSON 4xx whose ``detail`` is a message, or a correct result
(a search's ranking equals the one computed here from the index's vectors) — never a 5xx, never a
traceback. The number of cases each property tried is printed (run with ``-s``) and reported in
docs/serve.md.
"""
from __future__ import annotations

import io
import struct
import zlib

import pytest
import torch.nn.functional as F
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from cirlab.serve import ServeLimits, create_app
from serve_helpers import check_ranking, expected_scores, png_bytes

pytest_plugins = ["serve_helpers"]  # the world and retriever fixtures
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the fixtures' repr in reports

LIMITS = ServeLimits(max_upload_bytes=96 * 1024, max_pixels=250_000, max_text_chars=80, max_k=20, default_k=5)
BASELINES = {"sum", "image", "text", "weighted"}
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
CASES: dict[str, int] = {}


@pytest.fixture(scope="module")
def client(retriever):
    app = create_app(retriever, methods=["sum", "image", "text", "weighted", "weighted:0.3"], limits=LIMITS)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        yield c
    print("\nHTTP fuzz cases tried:", CASES, "total", sum(CASES.values()))


# ---- inputs ----------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def header_png(width: int, height: int, colour_type: int, body: bytes) -> bytes:
    """A PNG whose header says width x height, with ``body`` compressed as its only data (usually too short)."""
    depth = 8 if colour_type else 1
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(body)) + _chunk(b"IEND", b""))


def image_uploads(gallery_files: list[bytes]) -> st.SearchStrategy[bytes]:
    real = st.sampled_from(gallery_files)

    @st.composite
    def mutated(draw) -> bytes:  # noqa: ANN001
        data = bytearray(draw(real))
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
        cut = draw(st.integers(8, len(data)))
        return bytes(data[:cut])

    @st.composite
    def as_format(draw) -> bytes:  # noqa: ANN001
        im = Image.open(io.BytesIO(draw(real))).convert(draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1"])))
        fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "ICO"]))
        if fmt == "JPEG" and im.mode in ("RGBA", "P"):
            im = im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, fmt)
        return buf.getvalue()

    headers = st.builds(header_png, st.integers(0, 2**31 - 1) | st.integers(1, 3000), st.integers(0, 2**31 - 1)
                        | st.integers(1, 3000), st.sampled_from([0, 2, 3, 6, 7]), st.binary(max_size=64))
    return st.one_of(real, mutated(), as_format(), headers, st.binary(max_size=2048), st.just(b""))


def texts() -> st.SearchStrategy[str | None]:
    return st.none() | st.text(max_size=100) | st.sampled_from(["make it red", "  ", "add a blue circle", "x" * 81])


# ---- properties --------------------------------------------------------------------------------------
def check_error(r) -> None:  # noqa: ANN001
    assert r.status_code < 500, (r.status_code, r.text)
    assert "Traceback" not in r.text and 'File "' not in r.text
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/json", r.headers
        if r.request.method == "HEAD":
            return  # a HEAD answer has no body
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail.strip(), r.text


def expected_query(retriever, method: str, reference, text: str):  # noqa: ANN001, ANN201
    """The query vector of a baseline method, computed here from the index's vectors and the backbone."""
    if isinstance(reference, str):
        img = F.normalize(retriever.index.vectors([reference])[0], dim=-1)
    else:
        img = retriever.backbone.encode_images([reference])[0]
    txt = retriever.backbone.encode_texts([text])[0]
    name, _, arg = method.partition(":")
    if name == "image":
        return img
    if name == "text":
        return txt
    w = 0.5 if name == "sum" else float(arg or 0.6)
    return F.normalize((1 - w) * img + w * txt, dim=-1)


@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_search_requests(client, retriever, world, data):
    CASES["search"] = CASES.get("search", 0) + 1
    ids = world.gallery.ids
    files = [png_bytes(p) for p in world.gallery.paths[:4]]
    form: dict[str, str] = {}

    def field(name: str, good: st.SearchStrategy, bad: st.SearchStrategy):  # noqa: ANN202
        """Each field is hostile one time in four, so about a third of the requests are valid throughout."""
        return data.draw(bad if data.draw(st.integers(0, 3), f"{name} hostile?") == 0 else good, name)

    text = field("text", st.sampled_from(["make it red", "add a blue circle", "remove the square"])
                 | st.text(min_size=1, max_size=40).filter(str.strip), texts())
    k = field("k", st.none() | st.integers(1, LIMITS.max_k).map(str), st.integers(-3, 40).map(str)
              | st.text(max_size=4))
    method = field("method", st.none() | st.sampled_from(["sum", "image", "text", "weighted", "weighted:0.3"]),
                   st.sampled_from(["weighted:2", "searle-oti", "combiner:/etc", "../x", ""]) | st.text(max_size=12))
    by_id = data.draw(st.booleans(), "reference by id?")
    ref = upload = None
    if by_id or data.draw(st.integers(0, 3), "both references?") == 0:
        ref = field("reference_id", st.sampled_from(ids), st.none() | st.sampled_from(
            ["../../etc/passwd", "/etc/passwd", "a\\b", "x\x00y", "", "no-such-id"]) | st.text(max_size=20))
    if not by_id or data.draw(st.integers(0, 3), "both references?") == 0:
        upload = field("image", st.sampled_from(files), st.none() | image_uploads(files))
    for name, value in (("text", text), ("k", k), ("method", method), ("reference_id", ref)):
        if value is not None:
            form[name] = value
    files_field = None
    if upload is not None:
        name = data.draw(st.text(max_size=20) | st.just("ref.png"), "filename")
        ctype = data.draw(st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "text/plain"]))
        files_field = {"image": (name, upload, ctype)}
    r = client.post("/search", data=form or None, files=files_field)
    check_error(r)
    if r.status_code != 200:
        return
    CASES["search answered"] = CASES.get("search answered", 0) + 1
    body = r.json()
    used = body["method"]
    want_k = body["k"]
    assert float(form.get("k", "").strip() or LIMITS.default_k) == want_k  # an empty field is the default
    assert body["text"] == (text or "").strip()
    if used in BASELINES or used.startswith("weighted:"):
        # the service decodes uploads with their EXIF orientation applied
        reference = ref if ref else ImageOps.exif_transpose(Image.open(io.BytesIO(upload))).convert("RGB")
        q = expected_query(retriever, used, reference, body["text"])
        excluded = {ref} if ref else set()
        check_ranking(body["results"], expected_scores(retriever, q), want_k, exclude=excluded)
        CASES["search ranking checked"] = CASES.get("search ranking checked", 0) + 1


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_other_routes_and_headers(client, world, data):
    CASES["routes"] = CASES.get("routes", 0) + 1
    ids = world.gallery.ids
    verb = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]), "verb")
    path = data.draw(st.sampled_from(["/health", "/gallery", "/openapi.json", "/", "/static/app.js", "/search",
                                      "/static/../../etc/passwd", "/nope"])
                     | st.sampled_from(ids[:4] + ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "a%5Cb", "%00", "x" * 300])
                     .map(lambda i: f"/images/{i}")
                     | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(lambda s: "/" + s),
                     "path")
    params = data.draw(st.dictionaries(st.sampled_from(["size", "offset", "limit", "k", "x"]),
                                       st.integers(-10, 10_000).map(str) | st.text(max_size=5), max_size=3), "params")
    headers = data.draw(st.fixed_dictionaries({}, optional={
        "host": st.sampled_from(["localhost", "attacker.example", "localhost:1", "127.0.0.1:8000", "[::1]", ""]),
        "origin": st.sampled_from(["http://localhost", "http://attacker.example", "null", "::"]),
        "sec-fetch-site": st.sampled_from(["same-origin", "cross-site", "none", "same-site"]),
        "authorization": st.sampled_from(["Bearer x", "Basic abc", ""]),
        "content-type": st.sampled_from(["multipart/form-data", "multipart/form-data; boundary=", "text/plain",
                                         "application/x-www-form-urlencoded"]),
    }), "headers")
    body = data.draw(st.none() | st.binary(max_size=300), "body")
    r = client.request(verb, path, params=params, headers=headers, content=body)
    check_error(r)
    if r.status_code == 200 and path.startswith("/images/") and verb == "GET":
        assert r.headers["content-type"].startswith("image/")
