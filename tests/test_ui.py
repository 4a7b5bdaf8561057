"""The web UI in a real browser: Debian's chromium, driven by Playwright, against `fakebank serve` on 127.0.0.1.

Skipped, saying why, where Playwright or chromium is missing; under CI (.ci/run installs chromium) a missing
browser fails instead. A screenshot of every page goes to bench-out/ui/ as a test artifact.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from fakebank.api import Fakebank
from test_service import AUTH, KEY, WEIGHTS, Server

DATA = Path(__file__).parent / "data"
SHOTS = Path(__file__).parent.parent / "bench-out" / "ui"
CHROMIUM = os.environ.get("FAKEBANK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
COMMFOR = sorted((DATA / "commfor").glob("*.png"))
STRANGER = DATA / "pdq" / "reg-test-input" / "labelme-subset" / "q0122.jpg"  # never added to the bank


def jpeg_copy(src: Path, size: int | None = None, quality: int = 85) -> bytes:
    """A re-encoded (optionally shrunk) copy: different bytes, same picture."""
    img = Image.open(src).convert("RGB")
    if size:
        img = img.resize((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def chromium():
    why = None
    if importlib.util.find_spec("playwright") is None:
        why = "Python playwright is not installed (pip install -e '.[test]')"
    elif not CHROMIUM:
        why = "no chromium found: apt-get install chromium (or set FAKEBANK_CHROMIUM to a Chromium binary)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests, but {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright's own browser download cannot work here: launch the system's chromium.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A bank of the five Community Forensics fakes plus a shrunk copy of the first (its campaign partner),
    served with an API key. Yields (server, {file name: item id})."""
    folder = tmp_path_factory.mktemp("ui_photos")
    for p in COMMFOR:
        shutil.copy(p, folder / p.name)
    (folder / "copy_274.jpg").write_bytes(jpeg_copy(COMMFOR[0], size=512))
    bank = tmp_path_factory.mktemp("ui_bank") / "bank"
    added = list(Fakebank(bank, weights=WEIGHTS).add(sorted(folder.iterdir()), source="telegram"))
    assert all(r["status"] == "added" for r in added)
    ids = {Path(r["path"]).name: r["id"] for r in added}
    srv = Server(bank, key=KEY).start()
    yield srv, ids
    srv.stop()


@pytest.fixture(scope="module")
def signed_in(chromium, ui):
    """One browser session, signed in through the form."""
    srv, _ = ui
    context = chromium.new_context(base_url=srv.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto("/ui/signin")
    page.fill("#key", KEY)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/query")
    yield page
    context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def served_as_jpeg(page, selector: str) -> int:
    """How many images under `selector` loaded, each a stored JPEG thumbnail (not the placeholder)."""
    srcs = page.eval_on_selector_all(selector, "els => els.filter(i => i.complete && i.naturalWidth > 0)"
                                               ".map(i => i.getAttribute('src'))")
    for src in srcs:
        assert page.request.get(src).headers["content-type"] == "image/jpeg", src
    return len(srcs)


def drop_files(page, selector: str, files: list[tuple[str, bytes, str]]) -> None:
    """A real drop event carrying File objects, as a desktop drag and drop delivers them."""
    payload = [{"name": n, "b64": base64.b64encode(d).decode(), "type": t} for n, d, t in files]
    transfer = page.evaluate_handle("""files => {
        const dt = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], f.name, {type: f.type}));
        }
        return dt;
    }""", payload)
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def test_a_wrong_key_is_refused_and_the_right_one_is_kept_out_of_urls_and_scripts(chromium, ui):
    srv, _ = ui
    context = chromium.new_context(base_url=srv.url)
    page = context.new_page()
    try:
        page.goto("/ui/query")
        assert page.url.endswith("/ui/signin")  # pages need the key
        page.fill("#key", "not-the-key")
        with page.expect_response("**/ui/signin") as answer:
            page.click("button[type=submit]")
        assert answer.value.status == 401
        assert page.locator("#refused").inner_text() == "Wrong key: access refused."
        shot(page, "signin-refused")
        page.goto("/ui/bank")
        assert page.url.endswith("/ui/signin") and not context.cookies()
        assert page.request.get("/ui/thumbs/1").headers["content-type"].startswith("text/html")  # the form, no image

        page.fill("#key", KEY)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui/query")
        (cookie,) = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]
        assert KEY not in page.url
        assert page.evaluate("document.cookie + JSON.stringify(sessionStorage) + JSON.stringify(localStorage)") == "{}{}"
        page.click("text=Sign out")
        page.wait_for_url("**/ui/signin")
        page.goto("/ui/bank")
        assert page.url.endswith("/ui/signin")
    finally:
        context.close()


def test_drop_a_copy_of_a_banked_fake_and_see_its_match(signed_in, ui):
    srv, ids = ui
    page = signed_in
    page.goto("/ui/query")
    page.check("#heatmap")
    drop_files(page, "#drop", [("suspicious.jpg", jpeg_copy(COMMFOR[2]), "image/jpeg"),
                               ("stranger.jpg", STRANGER.read_bytes(), "image/jpeg")])
    page.wait_for_selector("section.result >> nth=1")
    known, stranger = page.locator("section.result").all()
    assert known.locator(".file").inner_text() == "suspicious.jpg"
    assert known.locator(".verdict").inner_text() == "fake"
    assert known.locator(".reason").inner_text() == "near_duplicate"
    assert known.locator(".match-link").inner_text() == f"item #{ids[COMMFOR[2].name]}"
    assert stranger.locator(".match .none").is_visible() and stranger.locator(".match-link").count() == 0
    # the known copy side by side with the upload, neighbours with their thumbnails
    assert known.locator("img.query-img").evaluate("i => i.naturalWidth") == 256
    assert served_as_jpeg(page, "section.result >> nth=0 >> img.match-img") == 1
    assert served_as_jpeg(page, "section.result >> nth=0 >> .neighbour img") == len(ids)
    # provenance beside the verdict; the heat map toggles over the upload
    assert "No provenance metadata" in known.locator(".provenance").inner_text()
    img = known.locator("img.query-img")
    plain = img.get_attribute("src")
    known.locator(".heat-toggle").click()
    assert img.get_attribute("src").startswith("data:image/png;base64,") and img.get_attribute("src") != plain
    shot(page, "query")
    known.locator(".heat-toggle").click()
    assert img.get_attribute("src") == plain


def test_relabel_an_item_and_the_next_query_changes(signed_in, ui):
    srv, ids = ui
    page = signed_in
    item = ids[COMMFOR[2].name]
    page.goto(f"/ui/items/{item}")
    assert page.locator(".label-value").inner_text() == "fake"
    assert served_as_jpeg(page, "img.item-img") == 1
    page.click("button[data-label=real]")
    page.wait_for_url(f"**/ui/items/{item}?done=label")
    assert page.locator(".label-value").inner_text() == "real"
    assert page.locator("button[data-label=real]").get_attribute("aria-pressed") == "true"
    shot(page, "item")
    assert httpx.get(f"{srv.url}/v1/items/{item}", headers=AUTH).json()["label"] == "real"

    page.goto("/ui/query")
    page.set_input_files("#file", files=[{"name": "again.jpg", "mimeType": "image/jpeg",
                                          "buffer": jpeg_copy(COMMFOR[2], quality=70)}])  # picking submits too
    page.wait_for_selector("section.result")
    assert page.locator(".verdict").inner_text() == "real"
    assert page.locator(".match-link").inner_text() == f"item #{item}"

    page.goto(f"/ui/items/{item}")  # back as it was, for the other tests
    page.click("button[data-label=fake]")
    page.wait_for_url(f"**/ui/items/{item}?done=label")


def test_recompute_and_open_a_campaign(signed_in, ui):
    srv, ids = ui
    page = signed_in
    page.goto("/ui/campaigns")
    page.click("#recompute")
    page.wait_for_selector(".campaign-link")
    assert "new" in page.locator(".events").inner_text()
    shot(page, "campaigns")
    pair = {ids[COMMFOR[0].name], ids["copy_274.jpg"]}
    link = page.locator(".campaign-link").first
    name = link.inner_text()
    link.click()
    page.wait_for_url(f"**/ui/campaigns/{name}")
    assert page.locator("h1").inner_text().startswith(f"Campaign {name}")
    members = {int(t.strip().split()[0].lstrip("#")) for t in page.locator(".member > span:nth-child(2)").all_inner_texts()}
    assert members == pair  # the photo and its shrunk copy, nothing else
    assert served_as_jpeg(page, ".member img") == 2
    assert "telegram" in page.locator("table.meta").inner_text()
    shot(page, "campaign")
    records = httpx.get(f"{srv.url}/v1/campaigns", headers=AUTH).json()["results"]
    assert {r["campaign"]: set(r["members"]) for r in records}[name] == pair


def test_bank_page_counts_searches_and_deletes_with_confirmation(signed_in, ui):
    srv, ids = ui
    page = signed_in
    page.goto("/ui/bank")
    assert page.locator("#count-items").inner_text() == str(len(ids))
    assert page.locator(".item-link").count() == len(ids)  # recent additions
    assert served_as_jpeg(page, "img.mini") == len(ids)
    shot(page, "bank")
    victim = ids[COMMFOR[3].name]
    page.fill("#search", COMMFOR[3].stem)
    page.click("text=Search")
    page.wait_for_url("**/ui/bank?q=*")
    found = page.locator("section:has(h2:has-text('Found')) .item-link")
    assert found.all_inner_texts() == [f"#{victim}"]
    found.click()
    page.click("#delete")
    page.wait_for_url(f"**/ui/items/{victim}/delete")
    shot(page, "delete-confirm")
    assert httpx.get(f"{srv.url}/v1/items/{victim}", headers=AUTH).status_code == 200  # asking deletes nothing
    page.click("#confirm-delete")
    page.wait_for_url(f"**/ui/bank?removed={victim}")
    assert page.locator("[role=status]").inner_text() == f"Item #{victim} deleted."
    assert page.locator("#count-items").inner_text() == str(len(ids) - 1)
    assert httpx.get(f"{srv.url}/v1/items/{victim}", headers=AUTH).status_code == 404


def test_thumbnail_endpoint_over_http(ui):
    srv, ids = ui
    item = ids["copy_274.jpg"]
    r = httpx.get(f"{srv.url}/v1/items/{item}/thumbnail", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (256, 256)
    assert httpx.get(f"{srv.url}/v1/items/{item}/thumbnail").status_code == 401
    r = httpx.get(f"{srv.url}/v1/items/9999/thumbnail", headers=AUTH)
    assert r.status_code == 404 and "no item with id 9999" in r.json()["error"]
    # an upload over HTTP has no file on the server: its thumbnail is made from the upload and stored
    r = httpx.post(f"{srv.url}/v1/items", files=[("file", ("up.jpg", STRANGER.read_bytes()))], headers=AUTH,
                   timeout=60)
    (added,) = r.json()["results"]
    r = httpx.get(f"{srv.url}/v1/items/{added['id']}/thumbnail", headers=AUTH)
    assert r.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(r.content)).size == (256, 256)
