"""The main job end to end on the smoke preset: grid -> report -> book, offline, with -W.

This is the CI run of `hupeft reproduce --preset smoke`. It builds the book in the checkout
(book/results/ and _build/ are generated, git-ignored)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HTML = REPO / "_build" / "html"


def hupeft(*args):
    return subprocess.run([sys.executable, "-m", "hupeft", *args], capture_output=True, text=True, cwd=REPO)


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src", ""))


def result_numbers() -> dict[str, list[str]]:
    """The decimal numbers in the tables of Table I and Fig. 2's pages. (Tiny random models score
    chance in Table I whatever the learning rate; Fig. 2's final validation loss moves with it.)"""
    return {name: re.findall(r"<td>(-?\d+\.\d+)</td>", (HTML / "book" / "results" / f"{name}.html").read_text())
            for name in ("02-table1", "04-fig2")}


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = hupeft("reproduce", "--preset", "smoke", "--results", str(results))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results


def test_reproduce_smoke_builds_the_book_with_every_image(smoke_book):
    pages = sorted(HTML.glob("book/results/*.html"))
    assert len(pages) == len(list((REPO / "notebooks" / "report").glob("*.ipynb")))
    images = 0
    for page in HTML.rglob("*.html"):
        parser = Images()
        parser.feed(page.read_text())
        for src in parser.srcs:
            if src.startswith("data:"):
                continue
            assert not src.startswith(("http:", "https:", "//")), f"{page}: remote image {src}"
            assert (page.parent / src.split("#")[0]).resolve().exists(), f"{page}: missing {src}"
            images += 1
    assert images >= 4
    for page in HTML.rglob("*.html"):
        assert "cdn.jsdelivr" not in page.read_text(), f"{page} loads MathJax from a CDN"


def test_changed_parameter_changes_the_books_numbers(smoke_book):
    before = result_numbers()
    assert all(before.values())
    grid = hupeft("grid", "--preset", "smoke", "--results", str(smoke_book), "--methods", "lora",
                  "--set", "lr=0.02")
    assert grid.returncode == 0, grid.stderr[-2000:]
    rep = hupeft("report", "--preset", "smoke", "--results", str(smoke_book), "--build")
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    after = result_numbers()
    assert after["04-fig2"] != before["04-fig2"]
    assert len(after["02-table1"]) == len(before["02-table1"])


def test_claims_page_shows_each_claims_status_and_the_audit(smoke_book):
    """The paper audit on the smoke book: Table I's disagreeing means marked, each claim's status."""
    claims = (HTML / "book" / "results" / "09-claims.html").read_text()
    for needle in ("supported", "contradicted", "not checkable from Table I", "202.9 GB",
                   "Llama3.3-70B: Full FT 53.1 &gt; Hybrid 53.0", "largest +1.1 (BloomZ-7B1)"):
        assert needle in claims, needle
    assert "{doc}" not in claims  # a role in a cell's Markdown output is not rendered
    table1 = (HTML / "book" / "results" / "02-table1.html").read_text()
    assert table1.count("<td>≠</td>") == 8


CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


def render_offline(page: Path, tmp_path: Path) -> str:
    """The page's DOM after headless Chromium ran its scripts, with the network unplugged
    (a fresh network namespace when the OS allows one; otherwise Chromium's own flags)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000", "--dump-dom",
           page.as_uri()]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"]).returncode == 0:
        cmd = ["unshare", "-n"] + cmd
    else:
        cmd.insert(1, "--proxy-server=127.0.0.1:9")  # every request to the network fails
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs Debian's chromium)")
def test_results_pages_render_offline_in_headless_chromium(smoke_book, tmp_path):
    methods = render_offline(HTML / "book" / "methods.html", tmp_path)
    assert methods.count("<mjx-container") >= 10, "MathJax did not typeset offline"
    table1 = render_offline(HTML / "book" / "results" / "02-table1.html", tmp_path)
    assert "<table" in table1 and re.search(r"<td>-?\d+\.\d+</td>", table1)
    for page in sorted((HTML / "book" / "results").glob("*.html")):
        dom = render_offline(page, tmp_path)
        assert "Traceback" not in dom and "<h1" in dom, page.name
