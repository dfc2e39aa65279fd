"""The web page in headless Chromium (Debian's package, driven by Playwright) against a live server on 127.0.0.1.

Set ``PROBCLIP_WRITE_SCREENSHOT=1`` to refresh ``docs/serve-page.png`` from this test.
"""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright
from serve_support import draw_scene, live_server

from probclip.serve import create_app

CHROMIUM = "/usr/bin/chromium"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "serve-page.png"


@pytest.fixture(scope="module")
def server(tiny_indexes):
    with live_server(create_app(tiny_indexes)) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: install Debian's chromium package (see .ci/run)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _page(browser, width=1280, height=860):
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    return page, errors


def test_search_by_caption_more_general_click_and_upload(browser, server, tiny_indexes, tmp_path):
    image_index = tiny_indexes[0]
    page, errors = _page(browser)
    page.goto(server + "/")
    expect(page.locator("#index option")).to_have_count(2)
    page.fill("#q", "a large red circle")
    page.press("#q", "Enter")
    cards = page.locator("#results .card")
    expect(cards).to_have_count(24)
    expected = image_index.search("a large red circle", k=24)[0]
    assert cards.first.get_attribute("data-row-id") == str(expected.ids[0])
    first_image = cards.first.locator("img")
    page.wait_for_function("img => img.complete", arg=first_image.element_handle())  # loaded or failed
    assert first_image.evaluate("img => img.complete && img.naturalWidth > 0")
    bar = cards.first.locator(".ubar .ufill")
    expect(bar).to_be_visible()
    assert float(bar.evaluate("e => parseFloat(e.style.width)")) > 0
    expect(page.locator("#status")).to_contain_text("exact ranking")
    query = parse_qs(urlparse(page.url).query)
    assert query["q"] == ["a large red circle"] and query["index"] == [image_index.name]

    # the inclusion scores list only the items that pass the direction check: the page shows what the API returns
    shown = 0
    for button, score, name in (("#more-general", "included", "more general"),
                                ("#more-specific", "includes", "more specific")):
        page.click(button)
        expected = image_index.search("a large red circle", k=24, score=score)[0]
        expect(page.locator("#status")).to_contain_text(f"{len(expected)} results for")
        expect(page.locator("#status")).to_contain_text(name)
        assert parse_qs(urlparse(page.url).query)["score"] == [score]
        expect(cards).to_have_count(len(expected))
        if len(expected):
            expect(cards.first).to_have_attribute("data-row-id", str(expected.ids[0]))
        shown += len(expected)
    assert shown > 0  # at least one direction has items to show
    page.click("[data-score=csd]")
    expect(cards).to_have_count(24)

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot))
    assert Image.open(shot).size == (1280, 860)
    if os.environ.get("PROBCLIP_WRITE_SCREENSHOT") == "1":
        page.screenshot(path=str(shot))
        Image.open(shot).convert("RGB").quantize(colors=64).save(DOCS_SCREENSHOT, optimize=True)

    clicked = cards.nth(2).get_attribute("data-row-id")
    cards.nth(2).click()
    expect(page.locator("#status")).to_contain_text(f"item {clicked} of {image_index.name}")
    assert parse_qs(urlparse(page.url).query)["item"] == [f"{image_index.name}:{clicked}"]
    by_item = image_index.search(image_index.embedding([int(clicked)]), k=24)[0]
    expect(cards.first).to_have_attribute("data-row-id", str(by_item.ids[0]))

    upload = tmp_path / "query.png"
    draw_scene("green", "triangle", "small").save(upload)
    page.set_input_files("#file", str(upload))
    expect(page.locator("#status")).to_contain_text("uploaded image (64×64)")
    by_image = image_index.search(Image.open(upload), k=24)[0]
    expect(cards.first).to_have_attribute("data-row-id", str(by_image.ids[0]))
    assert errors == []
    page.close()


def test_shared_url_slider_and_phone_width(browser, server, tiny_indexes):
    text_index = tiny_indexes[1]
    page, errors = _page(browser, width=390, height=844)
    page.goto(f"{server}/?index={text_index.name}&q=a+small+blue+square&score=includes&k=12")
    cards = page.locator("#results .card")
    expected = text_index.search("a small blue square", k=12, score="includes")[0]
    assert len(expected) >= 5  # (fewer than k: only the items passing the direction check)
    expect(cards).to_have_count(len(expected))
    expect(page.locator("#more-specific")).to_have_attribute("aria-pressed", "true")
    assert [cards.nth(i).get_attribute("data-row-id") for i in range(len(expected))] == [str(i) for i in expected.ids]
    assert cards.first.locator("img").count() == 0 and cards.first.locator(".caption").inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone
    page.locator("#uq").fill("50")
    page.select_option("#k", "48")
    expect(page).to_have_url(re.compile(r"uq=50"))
    expect(page).to_have_url(re.compile(r"k=48"))
    filtered = text_index.search("a small blue square", k=48, score="includes", uncertainty_quantile=0.5)[0]
    assert 0 < len(filtered.ids) < 24
    wanted = sorted(str(i) for i in filtered.ids)  # exactly the items under the collection's median u
    page.wait_for_function(
        "wanted => JSON.stringify([...document.querySelectorAll('#results .card')].map(c => c.dataset.rowId).sort())"
        " === JSON.stringify(wanted)", arg=wanted, timeout=10_000)

    buffer = io.BytesIO()
    draw_scene("yellow", "circle", "large").save(buffer, format="PNG")
    dropped = page.evaluate_handle(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            return transfer;
        }""", base64.b64encode(buffer.getvalue()).decode())
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    expect(page.locator("#status")).to_contain_text("uploaded image (64×64)")
    assert errors == []
    page.close()


def test_numbers_explain_themselves_and_an_empty_answer_says_why(browser, server, tiny_indexes):
    image_index, text_index = tiny_indexes
    page, errors = _page(browser)
    # no image of this collection is more general than the caption: the page says why, in words
    assert len(image_index.search("a small blue square", k=24, score="included")[0]) == 0
    page.goto(f"{server}/?index={image_index.name}&q=a+small+blue+square&score=included")
    expect(page.locator("#status")).to_contain_text("0 results for")
    expect(page.locator("#status")).to_contain_text("more general")
    reason = page.locator("#empty-reason")
    expect(reason).to_contain_text("no image is more general than this caption under this model")
    expect(reason).to_contain_text("more uncertain")
    expect(page.locator("#results .card")).to_have_count(0)

    # hovering a number explains it; the buttons speak of "more general" / "more specific"
    page.click("#more-specific")
    cards = page.locator("#results .card")
    expect(cards).to_have_count(len(image_index.search("a small blue square", k=24, score="includes")[0]))
    expect(page.locator("#empty-reason")).to_have_count(0)
    assert "inclusion test" in cards.first.locator(".scoreval").get_attribute("title")
    assert cards.first.locator(".scoreval").inner_text().startswith("inclusion ")
    assert "uncertainty" in cards.first.locator(".ulabel").get_attribute("title")
    assert "more specific" in page.locator("#more-specific").get_attribute("title")
    assert "more general" in page.locator("#more-general").get_attribute("title")
    page.click("[data-score=csd]")
    expect(cards.first.locator(".scoreval")).to_have_attribute("title", re.compile("closed-form sampled distance"))

    # the status line names an active uncertainty filter
    expect(page.locator("#status")).not_to_contain_text("uncertainty filter")
    page.locator("#uq").fill("50")
    expect(page.locator("#status")).to_contain_text("uncertainty filter: only the 50% most certain items")
    assert errors == []
    page.close()


def test_page_takes_its_scores_and_default_from_the_service(browser, server, tiny_indexes):
    image_index = tiny_indexes[0]
    page, errors = _page(browser)
    served = {"scores": ["mean", "csd", "includes", "included"], "higher_is_better": {}, "max_k": 100,
              "defaults": {"score": "mean"}}  # a service whose default score is the cosine of the means
    page.route("**/search/options", lambda route: route.fulfill(json=served))
    page.goto(server + "/?q=a+large+red+circle&score=nonsense")
    cards = page.locator("#results .card")
    expect(cards).to_have_count(24)
    expected = image_index.search("a large red circle", k=24, score="mean")[0]
    expect(cards.first).to_have_attribute("data-row-id", str(expected.ids[0]))
    expect(cards.first.locator(".scoreval")).to_contain_text("cosine")  # the card's word for the score "mean"
    assert "score" not in parse_qs(urlparse(page.url).query)  # the service's default is left out of the URL
    page.goto(server + "/?q=a+large+red+circle&score=csd")
    expect(cards.first.locator(".scoreval")).to_contain_text("CSD")
    assert not errors
    page.close()
