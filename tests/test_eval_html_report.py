"""HTML reports rendered in headless Chromium: tables, sorting, and every embedded image decoded."""

import json

import pytest

from probclip.eval.cli import main
from suite_fixtures import build_benchmark_classification, build_benchmark_retrieval, save_tiny_model

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield browser
        browser.close()


def _open(browser, path):
    page = browser.new_page()
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page


def _images(page):
    return page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.alt])")


def test_task_report_has_metrics_plots_and_examples(tmp_path, browser):
    ckpt = save_tiny_model(tmp_path / "ckpt")
    data = build_benchmark_retrieval(tmp_path / "wds_r")
    out = tmp_path / "out"
    assert main(["--model", str(ckpt), "--task", "retrieval", "--data", str(data), "--out", str(out),
                 "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    page = _open(browser, out / "report.html")
    rows = page.eval_on_selector_all("table#metrics tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
    assert "csd/i2t/r1" in rows and "mean/t2i/map_at_r" in rows and len(rows) == 22
    images = _images(page)
    assert len(images) >= len(results["plots"]) + 3  # plots and at least the three image queries
    assert all(complete and width > 0 for complete, width, _ in images)
    assert sum(alt == "query image" for *_, alt in images) == 3
    examples = page.eval_on_selector_all(".example", "els => els.length")
    assert examples == len(results["examples"]["i2t"]) + len(results["examples"]["t2i"]) == 6
    text = page.inner_text("body")
    assert results["examples"]["i2t"][0]["top"][0]["caption"] in text
    page.close()


def test_suite_report_table_sorts_and_shows_uncertainty_plots(tmp_path, browser):
    ckpt = save_tiny_model(tmp_path / "ckpt")
    root = tmp_path / "root"
    build_benchmark_classification(root / "wds_cifar10")
    build_benchmark_classification(root / "wds_vtab-pets", per_class=5)
    build_benchmark_retrieval(root / "wds_mscoco_captions")
    out = tmp_path / "suite"
    assert main(["--model", str(ckpt), "--suite", "datacomp", "--data-root", str(root), "--out", str(out),
                 "--tasks", "cifar10,vtab/pets,mscoco,winogavil", "--no-progress"]) == 0
    summary = json.loads((out / "suite.json").read_text())
    page = _open(browser, out / "report.html")
    keys = page.eval_on_selector_all("table#suite tbody tr", "rows => rows.map(r => r.cells[1].textContent)")
    assert keys == [r["key"] for r in summary["tasks"]]
    images = _images(page)
    assert len(images) == 3 and all(complete and width > 0 for complete, width, _ in images)
    # Click the CSD header: rows sorted by CSD ascending, then descending; the unsupported task has no value.
    page.click("table#suite th:nth-child(4)")
    values = page.eval_on_selector_all("table#suite tbody tr", "rows => rows.map(r => r.cells[3].dataset.value)")
    done = sorted(r["csd"] for r in summary["tasks"] if r["csd"] is not None)
    assert [float(v) for v in values if v] == done
    page.click("table#suite th:nth-child(4)")
    values = page.eval_on_selector_all("table#suite tbody tr", "rows => rows.map(r => r.cells[3].dataset.value)")
    assert [float(v) for v in values if v] == done[::-1]
    # Each task name links to the task's own report, which renders too.
    href = page.get_attribute("table#suite a", "href")
    task_page = _open(browser, out / href)
    assert task_page.eval_on_selector_all("table#metrics tbody tr", "rows => rows.length") > 0
    assert all(complete and width > 0 for complete, width, _ in _images(task_page))
    page.close()
    task_page.close()
