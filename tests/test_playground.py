"""The browser playground and the offline API docs, driven in a real headless Chromium (Debian's
``chromium``, through Playwright; nothing is downloaded) against a server on 127.0.0.1 with random
ViT-B-32 weights and an API key. Every request the browser makes must stay on that server.

Screenshots of each panel go to ``artifacts/playground/`` (kept for people to look at).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect

from tests.conftest import REPO, cosines
from tests.server_helpers import running_server

pytestmark = pytest.mark.slow
NAME = "ViT-B-32::openai"
KEY = "playground-test-key"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "artifacts" / "playground"
CAPTIONS = ["cat", "rocket", "cup of coffee", "horse", "astronaut"]


@pytest.fixture(scope="module")
def server(vit_onnx_export):
    with running_server(model=NAME, weights=vit_onnx_export, api_key=KEY) as (url, _):
        yield url


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "chromium is missing: `make setup` installs Debian's chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def open_page(browser, server: str, width: int = 1100, height: int = 900):
    """A page of the server; any request for another address is recorded and refused here."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.escaped = []

    def guard(route) -> None:
        if route.request.url.startswith(server):
            route.continue_()
        else:
            page.escaped.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page.goto(f"{server}/")
    return page


def assert_stayed_local(page) -> None:
    """No request went to another address than the server's (a request the page's content policy
    refuses is never sent, so it never reaches this point)."""
    page.wait_for_load_state("networkidle")
    assert not page.escaped, page.escaped


@pytest.fixture
def page(browser, server):
    page = open_page(browser, server)
    page.fill("#api-key", KEY)
    page.click("#key-form button")
    expect(page.locator("#model-info")).to_contain_text("ViT-B-32", timeout=60_000)
    yield page
    assert_stayed_local(page)
    page.context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def vectors_of(api, inputs: list[dict]) -> np.ndarray:
    answer = api.post("/encode", json={"inputs": inputs})
    answer.raise_for_status()
    return np.asarray(answer.json()["embeddings"], dtype=np.float32)


def image_input(path: Path) -> dict:
    import base64

    return {"image": base64.b64encode(path.read_bytes()).decode()}


def test_the_api_key_flow(browser, server) -> None:
    page = open_page(browser, server)
    page.wait_for_selector("#key-form:not([hidden])")
    assert "needs its API key" in page.inner_text("#model-info")
    page.fill("#api-key", "wrong key")
    page.click("#key-form button")
    expect(page.locator("#model-info")).to_contain_text("refused")
    page.fill("#api-key", KEY)
    page.click("#key-form button")
    expect(page.locator("#model-info")).to_contain_text("ViT-B-32", timeout=60_000)
    info = page.inner_text("#model-info")
    assert all(part in info for part in ("ViT-B-32::openai", "open_clip", "512-d", "onnx", "cpu", "fp32"))
    assert page.is_hidden("#key-form") and KEY not in page.url
    shot(page, "0-key")
    assert_stayed_local(page)
    page.context.close()


def test_embed_a_text_and_an_image(page, api, photo_paths) -> None:
    page.fill("#embed-text", "a photo of a cat")
    page.click("#embed-text-go")
    page.wait_for_selector("#embed-result:not([hidden])")
    assert page.inner_text("#embed-dim") == "512"
    shown = np.asarray([page.eval_on_selector("#embed-json", "e => JSON.parse(e.value)")], dtype=np.float32)
    assert cosines(shown, vectors_of(api, [{"text": "a photo of a cat"}])).min() >= 0.9999

    photo = Path(photo_paths[1])
    page.set_input_files("#embed-file", str(photo))
    expect(page.locator("#embed-what")).to_have_text(photo.name)
    shown = np.asarray([page.eval_on_selector("#embed-json", "e => JSON.parse(e.value)")], dtype=np.float32)
    assert cosines(shown, vectors_of(api, [image_input(photo)])).min() >= 0.9999
    shot(page, "1-embed")


def test_rank_bars_follow_the_apis_scores(page, api, photo_paths) -> None:
    photo = Path(photo_paths[0])
    page.click("#tab-rank")
    page.set_input_files("#rank-query-file", str(photo))
    page.fill("#rank-labels", "\n".join(CAPTIONS))
    page.click("#rank-go")
    page.wait_for_selector("#rank-bars li")
    bars = page.eval_on_selector_all(
        "#rank-bars li", "items => items.map(i => [Number(i.dataset.index), Number(i.dataset.score)])"
    )
    prompts = [f"a photo of a {c}" for c in CAPTIONS]
    ranked = api.post(
        "/rank", json={"query": image_input(photo), "candidates": [{"text": p} for p in prompts]}
    )
    expected = [(m["index"], m["clip_score"]) for m in ranked.json()["matches"]]
    assert [i for i, _ in bars] == [i for i, _ in expected]
    assert np.allclose([s for _, s in bars], [s for _, s in expected], atol=1e-6)
    assert [s for _, s in bars] == sorted((s for _, s in bars), reverse=True)
    shot(page, "2-rank")


def test_similarity_matrix_values_are_the_vectors_cosines(page, api, photo_paths) -> None:
    texts = ["a photo of a cat", "a rocket", "coffee"]
    photos = [Path(p) for p in photo_paths[:3]]
    page.click("#tab-matrix")
    page.fill("#matrix-texts", "\n".join(texts))
    page.set_input_files("#matrix-files", [str(p) for p in photos])
    page.click("#matrix-go")
    page.wait_for_selector("#matrix-out td")
    shown = np.asarray(
        page.eval_on_selector_all(
            "#matrix-out tbody tr",
            "rows => rows.map(r => [...r.querySelectorAll('td')].map(c => Number(c.dataset.value)))",
        )
    )
    vectors = vectors_of(api, [{"text": t} for t in texts] + [image_input(p) for p in photos])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.allclose(shown, vectors[:3] @ vectors[3:].T, atol=1e-4)
    shot(page, "3-similarity")


def test_search_ten_images(page, api, photo_paths) -> None:
    photos = [Path(p) for p in photo_paths]
    assert len(photos) == 10
    page.click("#tab-search")
    page.set_input_files("#search-files", [str(p) for p in photos])
    page.click("#search-index")
    expect(page.locator("#search-status")).to_contain_text("10 of 10", timeout=120_000)
    page.fill("#search-text", "a photo of a horse")
    page.click("#search-go")
    page.wait_for_selector("#search-results li")
    shown = page.eval_on_selector_all(
        "#search-results li", "items => items.map(i => [i.dataset.name, Number(i.dataset.score)])"
    )
    gallery = vectors_of(api, [image_input(p) for p in photos])
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    query = vectors_of(api, [{"text": "a photo of a horse"}])[0]
    scores = gallery @ (query / np.linalg.norm(query))
    best = np.argsort(-scores)[:5]
    assert [name for name, _ in shown] == [photos[i].name for i in best]
    assert np.allclose([s for _, s in shown], scores[best], atol=1e-4)
    shot(page, "4-search")


def test_an_error_shows_the_apis_words_and_the_item(page, tmp_path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    page.set_input_files("#embed-file", str(broken))
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error")
    assert "422 InvalidInput" in message and "(item: broken.png)" in message
    assert "corrupt" in message or "not an image" in message
    shot(page, "5-error")


def test_a_phone_sized_screen_has_no_sideways_scroll(browser, server) -> None:
    page = open_page(browser, server, width=390, height=844)
    page.fill("#api-key", KEY)
    page.click("#key-form button")
    expect(page.locator("#model-info")).to_contain_text("ViT-B-32", timeout=60_000)
    page.click("#tab-rank")
    page.keyboard.press("ArrowRight")  # tabs follow the arrow keys
    assert page.is_visible("#panel-matrix") and page.is_hidden("#panel-rank")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "6-phone")
    page.context.close()


def test_the_api_docs_render_offline(browser, server) -> None:
    page = open_page(browser, server)
    page.goto(f"{server}/docs")
    page.wait_for_selector(".opblock")
    spec = httpx.get(f"{server}/openapi.json").json()
    operations = sum(len(methods) for methods in spec["paths"].values())
    assert page.locator(".opblock").count() == operations >= 6
    shot(page, "7-docs")
    page.goto(f"{server}/redoc")
    page.wait_for_selector("text=/encode")
    assert_stayed_local(page)
    page.context.close()


def test_no_playground_turns_it_off(vit_onnx_export) -> None:
    with running_server(model=NAME, weights=vit_onnx_export, playground=False) as (url, _):
        assert httpx.get(f"{url}/").status_code == 404
        assert httpx.get(f"{url}/docs").status_code == 200


def test_a_server_of_two_models_offers_a_choice(browser, vit_onnx_export, encoder_for) -> None:
    rn50 = encoder_for("RN50::openai", "onnx")
    models = [f"{NAME}={vit_onnx_export}", f"RN50::openai={rn50.info()['weights']}"]
    with running_server(model=models) as (url, _):
        page = open_page(browser, url)
        expect(page.locator("#model-info")).to_contain_text("ViT-B-32", timeout=60_000)
        assert page.is_visible("#model-picker")
        page.select_option("#model-choice", "RN50::openai")
        expect(page.locator("#model-info")).to_contain_text("RN50::openai · open_clip · 1024-d")
        assert "loads on first use" in page.inner_text("#model-info")  # not loaded before its first request
        page.fill("#embed-text", "a photo of a cat")
        page.click("#embed-text-go")
        page.wait_for_selector("#embed-result:not([hidden])")
        assert page.inner_text("#embed-dim") == "1024"
        shown = np.asarray(
            [page.eval_on_selector("#embed-json", "e => JSON.parse(e.value)")], dtype=np.float32
        )
        assert cosines(shown, rn50.encode(["a photo of a cat"])).min() >= 0.9999
        expect(page.locator("#model-info")).not_to_contain_text("loads on first use")  # loaded now
        shot(page, "7-models")
        assert_stayed_local(page)
        page.context.close()


def test_search_a_served_index_with_thumbnails(
    browser, vit_onnx_export, encoder_for, photos_dir, tmp_path
) -> None:
    """``clipserve serve --index``: the Search tab queries the server's index; its results are the
    ranking of the photos' own /encode vectors, each shown with its thumbnail."""
    from clipserve.index import Index
    from clipserve.index.collect import entries_from, media_filter

    index = Index.create(tmp_path / "photos-index", encoder_for(NAME, "onnx"))
    index.update(entries_from([photos_dir], media_filter(False)))
    with running_server(index=str(tmp_path / "photos-index"), weights=vit_onnx_export, api_key=KEY) as (
        url,
        _,
    ):
        page = open_page(browser, url)
        page.fill("#api-key", KEY)
        page.click("#key-form button")
        expect(page.locator("#model-info")).to_contain_text("ViT-B-32", timeout=60_000)
        page.click("#tab-search")
        expect(page.locator("#served-index-info")).to_contain_text("photos-index: 10 items")
        page.fill("#served-text", "a photo of a cat")
        page.fill("#served-k", "5")
        page.click("#served-go")
        loaded = "[...document.querySelectorAll('#served-results img')].filter(i => i.naturalWidth > 0)"
        page.wait_for_function(f"() => {loaded}.length == 5")
        shown = page.eval_on_selector_all("#served-results li", "items => items.map(i => i.dataset.id)")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as api:
            photos = sorted(p for p in photos_dir.iterdir() if p.suffix != ".csv")
            gallery = vectors_of(api, [image_input(p) for p in photos])
            query = vectors_of(api, [{"text": "a photo of a cat"}])[0]
        scores = (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)) @ (query / np.linalg.norm(query))
        assert shown == [str(photos[i].resolve()) for i in np.argsort(-scores)[:5]]
        shot(page, "8-search-index")
        assert_stayed_local(page)
        page.context.close()
