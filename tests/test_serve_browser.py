"""`dmlkit serve` on a tiny trained run, driven in a real headless Chromium (Debian's `chromium`
through Playwright; scripts/install.sh installs both). Skipped, with the reason, only where no
browser or Fashion-MNIST can be installed."""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from dmlkit.cli import main

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
SAME_RGB, OTHER_RGB = "rgb(26, 152, 80)", "rgb(215, 48, 39)"  # dmlkit.viz.grids.SAME / OTHER
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]

pytestmark = pytest.mark.skipif(not FMNIST.exists() and not os.environ.get("DMLKIT_DATA"),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    assert main(["train", "--method", "stml", "--dataset", "fashion-mnist", "--train-subset", "240",
                 "--test-subset", "200", "--batch-size", "60", "--epochs", "1", "--no-progress", "--threads", "1",
                 "--set", "backbone=mnist-net", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def server(run_dir):
    from dmlkit.serve import make_server, open_run

    srv = make_server(open_run(run_dir), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def raw_get(srv, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (browsers and urllib would normalise ``..``)."""
    connection = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def test_report_links_resolve_from_the_run_directory(run_dir, server):
    links = re.findall(r"\]\(([^)]+)\)", (run_dir / "report.md").read_text())
    assert len(links) >= 3
    for link in links:
        assert (run_dir / link).is_file(), link
        assert raw_get(server, f"/files/{link}")[0] == 200


def test_page_scores_average_to_the_run_metrics(run_dir, server):
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    means = server.view.index.means()
    assert means["recall@1"] == pytest.approx(test["recall@1"], abs=1e-9)
    assert means["map@r"] == pytest.approx(test["map@r"], abs=1e-9)


def test_files_outside_the_run_directory_are_refused(run_dir, server, tmp_path):
    outside = run_dir.parent / "secret.txt"
    outside.write_text("not for the page")
    (run_dir / "link-out").symlink_to(outside)
    for path in ("/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/..%2fsecret.txt",
                 "/files//etc/passwd", "/files/link-out", "/static/../../cli.py"):
        status, body = raw_get(server, path)
        assert status in (403, 404), path
        assert b"not for the page" not in body and b"root:" not in body
    assert raw_get(server, "/files/config.yaml")[0] == 200
    assert raw_get(server, "/files/config.yaml", {"Host": "evil.example:80"})[0] == 403  # DNS rebinding
    assert raw_get(server, "/files/config.yaml", {"Host": "localhost"})[0] == 200


def test_path_query_and_bad_input_answer_one_line(server, run_dir, tmp_path):
    picture = tmp_path / "item0.png"
    picture.write_bytes(server.view.thumbnail("q", 0))
    status, body = raw_get(server, f"/api/query-path?k=3&path={picture}")
    assert status == 200 and json.loads(body)["neighbours"][0]["index"] == 0
    status, body = raw_get(server, "/api/query?index=999999")
    assert status == 400 and "out of range" in json.loads(body)["error"]
    status, body = raw_get(server, "/api/items?page=x")
    assert status == 400 and "page must be an integer" in json.loads(body)["error"]


def test_page_in_a_headless_browser(server, run_dir, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    browser_path = chromium_path()
    if browser_path is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; scripts/install.sh does it where apt runs)")
    view = server.view
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    picture = tmp_path / "upload.png"
    picture.write_bytes(view.thumbnail("q", 5))  # a dataset image from outside: exactly item 5's pixels
    with playwright_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        # a new empty profile; Playwright passes it to Chromium as --user-data-dir
        browser = p.chromium.launch_persistent_context(profile, executable_path=browser_path, headless=True,
                                                       args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=15000)
            assert page.locator(".tile").count() == 60
            assert "Trouser" in page.inner_text("#class-filter")  # Fashion-MNIST's names, not 0-9

            # click a query: its neighbours, classes, colours and similarities are the index's
            page.locator(".tile").nth(3).click()
            page.wait_for_selector("#neighbours figure")
            expected = view.index.query_item(3, 8)
            figures = page.locator("#neighbours figure")
            assert figures.count() == 8
            for rank, n in enumerate(expected["neighbours"]):
                figure = figures.nth(rank)
                assert figure.get_attribute("data-index") == str(n["index"])
                assert figure.get_attribute("data-class") == n["class_name"]
                colour = figure.evaluate("e => getComputedStyle(e).borderTopColor")
                assert colour == (SAME_RGB if n["same"] else OTHER_RGB)
                assert figure.locator(".score").inner_text() == f"{n['score']:.3f}"
            assert expected["query"]["class_name"] in page.inner_text("#query-class")
            assert "AP" in page.inner_text("#query-scores")

            # worst queries first, then a class filter
            page.select_option("#order", "worst")
            worst = view.index.items(order="worst")["items"][0]["index"]
            page.wait_for_selector(f".tile[data-index='{worst}']:first-child")
            trouser = next(c for c in view.index.classes() if c["class_name"] == "Trouser")
            page.select_option("#class-filter", value=str(trouser["label"]))
            page.wait_for_function("document.querySelectorAll('.tile').length === 20")
            assert set(page.locator(".tile .class-name").all_inner_texts()) == {"Trouser"}

            # upload an image: embedded with the run's network, item 5 itself comes first
            page.set_input_files("#upload", str(picture))
            page.wait_for_function("document.getElementById('query-class').textContent === 'your image'")
            first = page.locator("#neighbours figure").first
            assert first.get_attribute("data-index") == "5"

            # metrics and pictures; a traversal URL is refused in the browser too
            page.click("#tab-metrics")
            recall = json.loads((run_dir / "metrics.json").read_text())["test"]["recall@1"]
            assert f"{100 * recall:.2f}" in page.inner_text("#metrics-values")
            page.wait_for_function("[...document.querySelectorAll('#pictures img')].every(i => i.naturalWidth > 0)")
            response = page.goto(url + "files/%2e%2e/%2e%2e/%2e%2e/etc/passwd")
            assert response.status in (403, 404)
        finally:
            browser.close()
