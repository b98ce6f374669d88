"""End to end: `cirlab serve` in a subprocess on loopback, the search page driven in headless Debian Chromium.

Saves a screenshot of the results grid to ``test-artifacts/serve-browser.png``.
"""
from __future__ import annotations

from pathlib import Path

import playwright.sync_api as playwright_api
import pytest
from playwright.sync_api import expect

from cirlab.backbones import create_backbone
from cirlab.data import load_dataset
from cirlab.index import build_index
from cirlab.netsafe import playwright_chromium_kwargs
from cirlab.retrieval import Retriever
from serve_helpers import cli_server

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "browser-test-token-0123456789"  # the server requires it; the page asks for it
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: run .ci/install-system.sh "
                                                              "(apt-get install chromium)")


def backbone_spec() -> str:
    """The shipped checkpoint when it is there, else deterministic random weights (same in every process)."""
    try:
        create_backbone("tiny:world")
        return "tiny:world"
    except Exception:
        return "tiny:random"


@pytest.fixture(scope="module")
def index_dir(small_world, tmp_path_factory) -> Path:
    gallery = load_dataset(small_world / "test").gallery
    d = tmp_path_factory.mktemp("browser-index")
    build_index(create_backbone(backbone_spec()), gallery, d, progress=False)
    return d


@pytest.fixture(scope="module")
def server(index_dir, tmp_path_factory):
    """`cirlab serve` on 127.0.0.1 with a port the OS picks, requiring a token; yields the base URL it prints."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with cli_server(index_dir, log, env={"CIRLAB_SERVE_TOKEN": TOKEN}, token=TOKEN) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(**playwright_chromium_kwargs(profile, str(CHROMIUM)),
                                                        viewport={"width": 1280, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()


def wait_for_thumbnails(page) -> None:
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=result] img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=20_000)


def shown_results(page) -> list[tuple[str, float]]:
    cards = page.locator('[data-testid="result"]')
    return [(cards.nth(n).get_attribute("data-id"), float(cards.nth(n).locator(".score").inner_text()))
            for n in range(cards.count())]


def test_search_page_upload_then_refine(server, browser_page, index_dir, small_world, tmp_path):
    page = browser_page
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    console_errors: list[str] = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    failed: list[tuple[int, str]] = []
    page.on("response", lambda res: failed.append((res.status, res.url)) if res.status >= 400 else None)

    dataset = load_dataset(small_world / "test")
    triplet = dataset.triplets[0]
    reference_file = dataset.gallery.path(triplet.reference)
    retriever = Retriever.from_index(index_dir)  # the same index, queried in this process for the expected answers
    k = 8

    page.goto(server + "/")
    page.wait_for_selector('[data-testid="token-form"]:not([hidden])', timeout=20_000)  # /health said 401
    assert "401" in page.locator('[data-testid="error"]').inner_text()
    page.fill('[data-testid="token-input"]', TOKEN)
    page.press('[data-testid="token-input"]', "Enter")
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    assert page.locator('[data-testid="token-form"]').is_hidden() and page.locator('[data-testid="error"]').is_hidden()
    assert [(s, u) for s, u in failed] == [(401, server + "/health")]
    failed.clear()
    console_errors.clear()
    assert page.locator("#method").input_value() == "sum"
    options = page.locator("#method option").all_inner_texts()
    assert {"sum", "image", "text", "weighted"} <= set(options)

    # turn 1: drop the reference file on the drop zone, type the modification
    transfer = page.evaluate_handle(
        "([bytes, name]) => { const dt = new DataTransfer();"
        " dt.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'})); return dt; }",
        [list(reference_file.read_bytes()), reference_file.name])
    page.dispatch_event('[data-testid="dropzone"]', "drop", {"dataTransfer": transfer})
    assert page.locator("#reference-preview").is_visible()
    assert page.locator("#reference-label").inner_text() == f"uploaded: {reference_file.name}"
    page.fill('[data-testid="text"]', triplet.caption)
    page.fill('[data-testid="k"]', str(k))
    page.click('[data-testid="search-btn"]')
    expect(page.locator('[data-testid="result"]')).to_have_count(k, timeout=20_000)
    first = shown_results(page)
    # an upload excludes nothing (the library, given the file path, would drop the gallery image stored in it)
    want = retriever.search(str(reference_file), triplet.caption, k=k, exclude_reference=False)
    assert [i for i, _ in first] == [h.id for h in want]
    assert [s for _, s in first] == pytest.approx([h.score for h in want], abs=1e-3)
    # every thumbnail in the grid loaded
    wait_for_thumbnails(page)

    # turn 2: click the best result that is not the uploaded image itself; it becomes the reference
    pick = next(n for n, (i, _) in enumerate(first) if i != triplet.reference)
    chosen = first[pick][0]
    page.locator('[data-testid="result"]').nth(pick).click()
    assert page.locator("#reference-label").get_attribute("data-ref-id") == chosen
    assert page.locator('[data-testid="text"]').input_value() == ""
    second_text = "make it larger"
    page.fill('[data-testid="text"]', second_text)
    page.select_option("#method", "weighted")
    page.click('[data-testid="search-btn"]')
    expect(page.locator('[data-testid="history-item"]')).to_have_count(2, timeout=20_000)
    second = shown_results(page)
    want2 = retriever.with_method("weighted").search(chosen, second_text, k=k)  # a gallery id: itself excluded
    assert [i for i, _ in second] == [h.id for h in want2]
    assert chosen not in [i for i, _ in second]
    history = page.locator('[data-testid="history-item"]').all_inner_texts()
    assert triplet.caption in history[0] and "sum" in history[0]
    assert second_text in history[1] and "weighted" in history[1]

    wait_for_thumbnails(page)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve-browser.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # a bad upload (picked with the file dialog) shows the server's message on the page
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    page.set_input_files('[data-testid="file-input"]', str(bad))
    page.fill('[data-testid="text"]', "red")
    page.click('[data-testid="search-btn"]')
    page.wait_for_selector('[data-testid="error"]:not([hidden])', timeout=10_000)
    assert "415" in page.locator('[data-testid="error"]').inner_text()
    assert "not an image" in page.locator('[data-testid="error"]').inner_text()

    # going back in the history restores that turn's results
    page.locator('[data-testid="history-item"]').nth(0).click()
    assert shown_results(page) == first

    # picking a reference from the gallery strip
    page.click("#gallery-picker summary")
    thumb = page.locator('[data-testid="gallery-strip"] img').first
    thumb.wait_for(timeout=10_000)
    picked = thumb.get_attribute("alt")
    thumb.click()
    assert page.locator("#reference-label").get_attribute("data-ref-id") == picked

    assert all(u.startswith(server + "/") or u.startswith("blob:") for u in requested), \
        [u for u in requested if not u.startswith(server)]
    assert failed == [(415, server + "/search")]  # only the bad upload
    assert len(console_errors) == 1 and "415" in console_errors[0], console_errors
