"""The page's query preview, duplicate toggle and downloads, in headless Chromium against a live server."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import expect, sync_playwright
from serve_support import draw_scene, live_server

from probclip.serve import create_app

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def server(tiny_indexes):
    with live_server(create_app(tiny_indexes)) as base:
        yield base


@pytest.fixture(scope="module")
def page(server):
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: install Debian's chromium package (see .ci/run)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860}, accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        yield page
        browser.close()
        assert not errors, errors


def _search_bodies(page) -> list:
    bodies: list = []
    page.on("request", lambda r: bodies.append(r.post_data) if r.url.endswith("/search") else None)
    return bodies


def test_duplicates_are_hidden_by_default_and_the_toggle_is_in_the_address(page, server):
    bodies = _search_bodies(page)
    page.goto(server + "/?q=a+small+red+circle")
    expect(page.locator("#results .card")).to_have_count(24)
    assert page.locator("#dedup").is_checked()
    assert json.loads(bodies[-1])["deduplicate"] is True
    page.uncheck("#dedup")
    expect(page.locator("#results .card")).to_have_count(24)
    assert json.loads(bodies[-1])["deduplicate"] is False
    assert parse_qs(urlparse(page.url).query)["dedup"] == ["0"]
    page.goto(server + "/?q=a+small+red+circle&dedup=0")
    expect(page.locator("#results .card")).to_have_count(24)
    assert not page.locator("#dedup").is_checked()


def test_results_download_as_json_and_csv(page, server, tmp_path):
    page.goto(server + "/?q=a+large+blue+square&k=12")
    cards = page.locator("#results .card")
    expect(cards).to_have_count(12)
    shown = [cards.nth(i).get_attribute("data-row-id") for i in range(12)]
    with page.expect_download() as as_json:
        page.click("#export-json")
    data = json.loads(Path(as_json.value.path()).read_text(encoding="utf-8"))
    assert as_json.value.suggested_filename == "probclip-results.json"
    assert [str(h["row_id"]) for h in data["results"]] == shown and data["query"]["text"] == "a large blue square"
    with page.expect_download() as as_csv:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(as_csv.value.path()).read_text(encoding="utf-8"))))
    assert as_csv.value.suggested_filename == "probclip-results.csv"
    assert [r["row_id"] for r in rows] == shown
    assert rows[0]["caption"] == data["results"][0]["metadata"]["caption"]


def test_the_query_image_or_item_is_previewed(page, server, tmp_path):
    page.goto(server + "/?q=a+small+green+square")
    expect(page.locator("#results .card")).to_have_count(24)
    expect(page.locator("#preview")).to_be_hidden()  # a caption is its own preview: the search box holds it
    upload = tmp_path / "yellow.png"
    draw_scene("yellow", "triangle", "large", px=80).save(upload)
    page.set_input_files("#file", str(upload))
    expect(page.locator("#preview-img")).to_be_visible()
    expect(page.locator("#preview-caption")).to_contain_text("yellow.png")
    assert page.locator("#preview-img").get_attribute("src").startswith("blob:")
    page.wait_for_function("() => document.getElementById('preview-img').naturalWidth === 80")
    expect(page.locator("#status")).to_contain_text("uploaded image")  # the upload's results, not the caption's
    first = page.locator("#results .card").first
    row = first.get_attribute("data-row-id")
    caption = first.locator(".caption").inner_text()
    first.click()
    expect(page.locator("#preview-caption")).to_contain_text(f"item {row} of collection/image")
    expect(page.locator("#preview-caption")).to_contain_text(caption)
    assert page.locator("#preview-img").get_attribute("src") == f"/items/collection/image/{row}/image?size=128"
    page.wait_for_function("() => document.getElementById('preview-img').naturalWidth > 0")
