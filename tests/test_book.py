"""The main job end to end on the smoke preset: grid -> report -> book, offline, with -W.

This is the CI run of `hupeft reproduce --preset smoke`. It builds the book in the checkout
(book/results/ and _build/ are generated, git-ignored)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
HTML = REPO / "_build" / "html"


def hupeft(*args):
    return subprocess.run([sys.executable, "-m", "hupeft", *args], capture_output=True, text=True, cwd=REPO)


# --- what a reader must never see on a page, and what every page must hold -----------------------

# Python's values, the machine's paths and the kernel's complaints, as a reader would see them.
NOT_FOR_READERS = {
    "None": r"\bNone\b",
    "nan": r"\b(?:nan|NaN)\b",
    "True/False": r"\b(?:True|False)\b",
    "a traceback": r"Traceback \(most recent call last\)",
    "a warning": r"\b[A-Z]\w*Warning\b|warnings\.warn",
    "site-packages": r"site-packages",
    "an absolute path": r"(?<![\w.~/+-])/(?:[\w.+-]+/)+[\w.+-]+|file:/|[A-Z]:\\\\",
    "an object's repr": r"<Figure size|object at 0x|<IPython\.",
    "a raw signature separator": r"\w\|\d+ [a-z]",
}


class PageParser(HTMLParser):
    """A built page's visible text (scripts and styles left out), its links and images, its ids,
    and the classes of cell outputs that are a stream to stderr or a traceback."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text, self.links, self.ids, self.streams = [], [], set(), []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        if a.get("id"):
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key) is not None and tag in ("a", "link", "img", "script", "source", "iframe"):
                self.links.append((tag, a[key]))
        classes = (a.get("class") or "").split()
        if "output" in classes and ({"stderr", "traceback"} & set(classes)):
            self.streams.append(" ".join(classes))

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse_page(page: Path) -> PageParser:
    parser = PageParser()
    parser.feed(page.read_text())
    return parser


def reader_problems(page: Path) -> list[str]:
    """What a reader should not see on the page: each rule of NOT_FOR_READERS that matches its
    text (with the text around it), and every output that went to stderr or is a traceback."""
    parsed = parse_page(page)
    text = re.sub(r"\s+", " ", " ".join(parsed.text))
    out = [f"{what}: ...{text[max(0, m.start() - 60):m.end() + 60]}..."
           for what, rule in NOT_FOR_READERS.items() for m in re.finditer(rule, text)]
    return out + [f"an output to stderr or a traceback ({c})" for c in parsed.streams]


def broken_links(page: Path, html: Path) -> list[str]:
    """Every link, stylesheet, script and image of the page that leaves the built book by an
    absolute path, or does not resolve inside it (a file that is not there, or an #anchor that
    the target page does not have). Links to the web are not followed (the book builds offline)."""
    parsed, out = parse_page(page), []
    for tag, ref in parsed.links:
        if ref.startswith(("http:", "https:", "mailto:", "data:", "javascript:")) or ref in ("", "#"):
            continue
        if ref.startswith(("/", "file:", "//")):
            out.append(f"<{tag}> {ref}: an absolute link (the built book could not be moved)")
            continue
        path, _, anchor = ref.partition("#")
        target = (page.parent / unquote(path.split("?")[0])).resolve() if path else page
        if not target.exists():
            out.append(f"<{tag}> {ref}: no such file")
        elif not target.resolve().is_relative_to(html.resolve()):
            out.append(f"<{tag}> {ref}: outside the built book")
        elif anchor and target.suffix == ".html" and unquote(anchor) not in parse_page(target).ids:
            out.append(f"<{tag}> {ref}: no #{anchor} there")
    return out


def book_pages(html: Path) -> list[Path]:
    """The book's own pages (Sphinx's search and index pages are left to Sphinx)."""
    return sorted({*(html / "book").glob("*.html"), *(html / "book" / "results").glob("*.html")})


# Run in each page by headless Chromium at 1280 px, once MathJax has typeset it: with every dropdown
# open, what is wider than the content column (a table, an equation, an image, or a box whose
# overflow hides part of what it holds; code blocks may scroll), each image that did not load or
# would be blurry at 2x (a raster with fewer than two pixels per displayed pixel), and on result
# pages each table without its CSV link and each figure without its Reproduce box.
LAYOUT_JS = r"""
<script>
(function () {
  function measure() {
    document.querySelectorAll("details").forEach(function (d) { d.open = true; });
    var art = document.querySelector("article.bd-article") || document.querySelector("main");
    var cs = getComputedStyle(art), box = art.getBoundingClientRect();
    var left = box.left + parseFloat(cs.paddingLeft), right = box.right - parseFloat(cs.paddingRight);
    var result = window.HUPEFT_RESULT_PAGE;
    var out = {column: Math.round(right - left), tables: 0, images: 0, math: 0, problems: []};
    function say(el) { return (el.innerText || el.getAttribute("src") || "").replace(/\s+/g, " ").slice(0, 90); }
    function outside(el) { var r = el.getBoundingClientRect(); return r.width > 0 && (r.right > right + 1 || r.left < left - 1); }
    function hides(el) { return el.scrollWidth > el.clientWidth + 1; }
    art.querySelectorAll("table").forEach(function (t) {
      out.tables++;
      if (outside(t) || hides(t)) out.problems.push("table " + t.scrollWidth + " px wide in a " + out.column + " px column: " + say(t));
      var block = t.closest(".hupeft-table-block");
      if (result && t.classList.contains("hupeft-table") && !(block && block.querySelector(".hupeft-csv a[href$='.csv']")))
        out.problems.push("table without its CSV link: " + say(t));
    });
    art.querySelectorAll("img").forEach(function (im) {
      out.images++;
      var src = im.getAttribute("src") || "", r = im.getBoundingClientRect();
      if (!im.complete || im.naturalWidth === 0) out.problems.push("image that did not load: " + src);
      else if (!/\.svg$/i.test(src) && im.naturalWidth < 2 * r.width - 1)
        out.problems.push("raster image blurry at 2x (" + im.naturalWidth + " px shown " + Math.round(r.width) + " px wide): " + src);
      if (outside(im)) out.problems.push("image " + Math.round(r.width) + " px wide in a " + out.column + " px column: " + src);
      var cell = im.closest(".cell_output");
      if (result && cell && !cell.querySelector("details.hupeft-reproduce")) out.problems.push("figure without its Reproduce box: " + src);
    });
    art.querySelectorAll("mjx-container").forEach(function (m) {
      out.math++;
      var shown = m.getAttribute("display") === "true" ? m : null;  // an inline one has no width of its own
      if (outside(m) || (shown && hides(shown))) out.problems.push("equation wider than the column: " + (m.getAttribute("aria-label") || say(m)));
    });
    art.querySelectorAll("div, figure, section, details").forEach(function (el) {
      var s = getComputedStyle(el);
      if (["auto", "scroll", "hidden", "clip"].indexOf(s.overflowX) >= 0 && hides(el) && !el.querySelector("pre, mjx-container, table") && !el.closest("pre"))
        out.problems.push(el.tagName.toLowerCase() + "." + el.className + " hides " + (el.scrollWidth - el.clientWidth) + " px: " + say(el));
    });
    var pre = document.createElement("pre");
    pre.id = "hupeft-layout";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  window.addEventListener("load", function () {
    var mj = window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
    (mj || Promise.resolve()).then(function () { setTimeout(measure, 300); });
  });
})();
</script>
"""


def layout(page: Path, tmp_path: Path) -> tuple[dict, str]:
    """The page as headless Chromium lays it out at 1280 px (LAYOUT_JS's findings) and its
    rendered DOM. The script runs in a copy of the page outside the book whose <base> is the
    page's own folder, so that its links resolve as the page's and the book is left as built."""
    probe = tmp_path / f"layout-{page.parent.name}-{page.name}"
    result = "true" if page.parent.name == "results" else "false"
    head = f'<head>\n<base href="{page.parent.as_uri()}/">\n<script>window.HUPEFT_RESULT_PAGE = {result};</script>'
    probe.write_text(page.read_text().replace("<head>", head, 1).replace("</body>", LAYOUT_JS + "</body>"))
    dom = render_offline(probe, tmp_path)
    found = re.search(r"<pre id=\"hupeft-layout\"[^>]*>(.*?)</pre>", dom, re.S)
    assert found, f"{page.name}: the layout script did not run"
    return json.loads(unescape(found.group(1))), dom


def result_numbers() -> dict[str, list[str]]:
    """The decimal numbers in the tables of Table I and Fig. 2's pages. (Tiny random models score
    chance in Table I whatever the learning rate; Fig. 2's final validation loss moves with it.)"""
    return {name: re.findall(r"<td>(-?\d+\.\d+)</td>", (HTML / "book" / "results" / f"{name}.html").read_text())
            for name in ("04-table1", "06-fig2")}


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = hupeft("reproduce", "--preset", "smoke", "--results", str(results))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results


def test_reproduce_smoke_builds_the_book_with_every_image(smoke_book):
    from hupeft import report

    pages = sorted(HTML.glob("book/results/*.html"))
    # Every page with content for these records; the XNLI / FLORES page has none on smoke and
    # leaves the table of contents.
    expected = [nb for nb in sorted(report.REPORT_NOTEBOOKS.glob("*.ipynb"))
                if report.has_content(nb, "smoke", smoke_book)]
    assert [p.stem for p in pages] == [nb.stem for nb in expected]
    assert "08-multilingual" not in {p.stem for p in pages}
    assert "08-multilingual" not in (HTML / "book" / "intro.html").read_text()
    images = sum(tag == "img" and not ref.startswith("data:") for page in book_pages(HTML)
                 for tag, ref in parse_page(page).links)
    assert images >= 4
    for page in HTML.rglob("*.html"):
        assert "cdn.jsdelivr" not in page.read_text(), f"{page} loads MathJax from a CDN"


def test_every_page_reads_without_python_or_the_machine(smoke_book):
    """No None, nan, True/False, traceback, warning, stderr, site-packages or absolute path on any
    page of the book, and every link and image resolving inside it."""
    problems = {page.name: reader_problems(page) + broken_links(page, HTML) for page in book_pages(HTML)}
    assert len(problems) >= 12
    assert not any(problems.values()), {k: v[:5] for k, v in problems.items() if v}


def test_the_built_book_moves_with_every_run_it_links(smoke_book, tmp_path):
    """Each run's record and executed notebook is linked relative to the book and kept inside it,
    so a copy of the built book elsewhere still holds everything it links."""
    moved = tmp_path / "elsewhere"
    shutil.copytree(HTML, moved)
    page = moved / "book" / "results" / "10-reproducibility.html"
    links = [ref for tag, ref in parse_page(page).links if tag == "a" and ref.startswith("files/runs/")]
    runs = len(list((smoke_book / "smoke").rglob("record.json")))
    assert sum(ref.endswith("/record.json") for ref in links) == runs
    assert sum(ref.endswith("/run.ipynb") for ref in links) == runs
    assert not broken_links(page, moved)
    record = json.loads((page.parent / next(r for r in links if r.endswith("record.json"))).read_text())
    assert record["config"]["preset"] == "smoke"
    csv = [ref for tag, ref in parse_page(moved / "book" / "results" / "04-table1.html").links if ref.endswith(".csv")]
    assert csv and all((moved / "book" / "results" / ref).read_text().startswith("method,") for ref in csv[:1])


def test_changed_parameter_changes_the_books_numbers(smoke_book):
    before = result_numbers()
    assert all(before.values())
    grid = hupeft("grid", "--preset", "smoke", "--results", str(smoke_book), "--methods", "lora",
                  "--set", "lr=0.02")
    assert grid.returncode == 0, grid.stderr[-2000:]
    rep = hupeft("report", "--preset", "smoke", "--results", str(smoke_book), "--build")
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    after = result_numbers()
    assert after["06-fig2"] != before["06-fig2"]
    assert len(after["04-table1"]) == len(before["04-table1"])


def test_claims_page_shows_each_claims_status_and_the_audit(smoke_book):
    """The paper audit on the smoke book: Table I's disagreeing means marked, each claim's status."""
    claims = (HTML / "book" / "results" / "02-claims.html").read_text()
    for needle in ("consistent with the paper", "our runs", "not testable here", "contradicted", "not checkable from Table I", "202.9 GB",
                   "Llama3.3-70B: Full FT 53.1 &gt; Hybrid 53.0", "largest +1.1 (BloomZ-7B1)"):
        assert needle in claims, needle
    assert "{doc}" not in claims  # a role left as text where Markdown output was not read as MyST
    table1 = (HTML / "book" / "results" / "04-table1.html").read_text()
    assert table1.count("<td>≠</td>") == 8


CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


def render_offline(page: Path, tmp_path: Path) -> str:
    """The page's DOM after headless Chromium ran its scripts, with the network unplugged
    (a fresh network namespace when the OS allows one; otherwise Chromium's own flags)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000", "--window-size=1280,900",
           "--dump-dom", page.as_uri()]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"]).returncode == 0:
        cmd = ["unshare", "-n"] + cmd
    else:
        cmd.insert(1, "--proxy-server=127.0.0.1:9")  # every request to the network fails
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def laid_out(smoke_book, tmp_path_factory):
    """Every page of the book as headless Chromium lays it out offline at 1280 px: LAYOUT_JS's
    findings and the rendered DOM, one browser run per page."""
    tmp = tmp_path_factory.mktemp("chromium")
    return {page.relative_to(HTML).as_posix(): layout(page, tmp) for page in book_pages(HTML)}


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs Debian's chromium)")
def test_results_pages_render_offline_in_headless_chromium(laid_out):
    _, methods = laid_out["book/methods.html"]
    assert methods.count("<mjx-container") >= 10, "MathJax did not typeset offline"
    _, table1 = laid_out["book/results/04-table1.html"]
    assert "<table" in table1 and re.search(r"<td>-?\d+\.\d+</td>", table1)
    _, beyond = laid_out["book/results/07-beyond.html"]
    assert beyond.count("<mjx-container") >= 5, "the math a result page prints was not typeset"
    for name, (_, dom) in laid_out.items():
        assert "Traceback" not in dom and "<h1" in dom, name
        text = re.sub(r"<[^>]+>", " ", dom[dom.find("<article"):dom.find("</article>")])
        assert not re.search(r"\\(?:lambda|lVert|sqrt|frac|text)\b|\$\\", text), f"{name}: TeX left untypeset"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs Debian's chromium)")
def test_every_table_equation_and_image_fits_the_column_at_1280px(laid_out):
    """Nothing wider than the content column (dropdowns open); every image loaded and sharp at 2x;
    on result pages every table beside its CSV link and every figure above its Reproduce box."""
    found = {name: found for name, (found, _) in laid_out.items()}
    assert sum(f["tables"] for f in found.values()) >= 20 and sum(f["images"] for f in found.values()) >= 6
    assert all(300 < f["column"] < 1280 for f in found.values())
    assert not any(f["problems"] for f in found.values()), {k: f["problems"][:5] for k, f in found.items() if f["problems"]}
