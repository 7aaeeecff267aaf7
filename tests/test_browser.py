"""The HTML report and the docs site in a real browser: headless Chromium, driven by Playwright.

Each page is loaded at 1280×900 and checked as a reader would see it: every image decoded, no
element wider than the window (nothing needs horizontal scrolling), no console error, no request
leaving the machine (any is aborted and reported), no broken local resource, formulas rendered
(docs). Screenshots are saved as test artefacts: in ``$XAI_TOOLBOX_ARTEFACTS`` (tox's browser env
sets it) or a pytest temporary folder; the path is printed.

Needs Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it; another binary with
``XAI_TOOLBOX_CHROMIUM=/path``) and the ``playwright`` package (the ``browser`` extra; its own
browser downloads are not used). The docs checks need a built site: ``XAI_TOOLBOX_SITE=<site
dir>`` (``tox -e browser`` builds it first). Without them the tests skip, saying what is missing.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

pytest.importorskip("PIL")

WIDTH, HEIGHT = 1280, 900
LAUNCH_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    """The Chromium binary: ``$XAI_TOOLBOX_CHROMIUM``, else the first on ``PATH``."""
    explicit = os.environ.get("XAI_TOOLBOX_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    binary = chromium_path()
    if binary is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set XAI_TOOLBOX_CHROMIUM)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser tests need playwright (pip install '.[browser]')"
    )
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=binary, headless=True, args=LAUNCH_FLAGS,
            viewport={"width": WIDTH, "height": HEIGHT},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("XAI_TOOLBOX_ARTEFACTS") or tmp_path_factory.mktemp("browser-artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {folder}")
    return folder


class Visit:
    """One page load with everything a reader's browser would complain about recorded."""

    def __init__(self, context: Any, url: str, local_hosts: tuple[str, ...] = ()) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.broken: list[str] = []
        self.local_hosts = local_hosts
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("response", self._response)
        self.page.route("**/*", self._route)
        self.page.goto(url, wait_until="networkidle")

    def _route(self, route: Any) -> None:
        url = route.request.url
        parsed = urlparse(url)
        if parsed.scheme in ("file", "data", "blob", "about") or parsed.hostname in self.local_hosts:
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.broken.append(f"{response.status} {response.url}")

    def check(self, *, scroll_containers_allowed: bool) -> None:
        """Every image decoded, nothing wider than the window, no error, nothing fetched from
        outside, no local resource missing."""
        page = self.page
        assert not self.outside, f"requests leaving the machine: {self.outside[:5]}"
        assert not self.broken, f"missing resources: {self.broken[:5]}"
        assert not self.errors, f"console errors: {self.errors[:5]}"
        undecoded = page.evaluate(
            "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => (i.alt || i.src).slice(0, 80))"
        )
        assert not undecoded, f"images not decoded: {undecoded[:5]}"
        assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH, "the page scrolls sideways"
        wide = page.evaluate(_TOO_WIDE, [WIDTH, scroll_containers_allowed])
        assert not wide, f"elements wider than the {WIDTH} px window: {wide[:5]}"

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=str(path), full_page=True)
        self.page.screenshot(path=str(path.with_name(path.stem + "-top.png")))


# Visible elements whose box ends past the window. With scroll containers allowed (the docs: code
# blocks and wide tables scroll inside their own box), an element inside a container that
# scrolls or clips horizontally and itself fits counts as fitting.
_TOO_WIDE = """([width, allowContainers]) => {
  const fits = (el) => el.getBoundingClientRect().right <= width + 0.5;
  const insideContainer = (el) => {
    for (let p = el.parentElement; p; p = p.parentElement) {
      const overflow = getComputedStyle(p).overflowX;
      if (["auto", "scroll", "hidden", "clip"].includes(overflow) && p !== document.body
          && p !== document.documentElement) return fits(p);
    }
    return false;
  };
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || fits(el)) continue;
    if (!el.checkVisibility({visibilityProperty: true, opacityProperty: true})) continue;  // hidden
    if (allowContainers && insideContainer(el)) continue;
    out.push(`${el.tagName.toLowerCase()}.${el.className || ""} right=${Math.round(box.right)}`);
  }
  return out;
}"""


# -- the report --------------------------------------------------------------------------------
def _big_report(path: Path) -> Path:
    """A report as large as the demo's: 28 methods (signed and not), 14 metrics in three
    families with curves, 11 images (two gallery pages), long names and settings."""
    from xai_toolbox.base import MetricResult
    from xai_toolbox.report import write_report

    rng = np.random.default_rng(0)
    n = 11
    images = rng.random((n, 64, 64, 3), dtype=np.float32)
    methods = [f"method_with_a_long_name_{i}" if i % 7 == 0 else f"m{i}" for i in range(28)]
    maps = {m: (rng.normal(size=(n, 64, 64)) if i % 3 == 0 else rng.random((n, 64, 64))).astype(np.float32)
            for i, m in enumerate(methods)}
    families = ["fidelity"] * 8 + ["complexity"] * 2 + ["localisation"] * 4
    results: dict[str, dict[str, MetricResult]] = {}
    for m in methods:
        results[m] = {}
        for j, family in enumerate(families):
            name = "relevance_rank_accuracy" if j == 13 else f"metric_{j}"
            curves = np.sort(rng.random((n, 11)), axis=1)[:, ::-1].copy() if j < 2 else None
            results[m][name] = MetricResult(name, rng.random(n), j % 2 == 0, curves, family=family)
    settings = {"model": "x" * 300, "nested": {"a very long parameter name indeed": list(range(60))}}
    return write_report(
        path, images=images, maps=maps, results=results, names=[f"image_{i}_{'z' * 40}.png" for i in range(n)],
        labels=list(rng.integers(0, 5, n)), predictions=list(rng.integers(0, 5, n)),
        class_names=["circle", "square", "triangle", "cross", "ring"], settings=settings,
        timings={m: 1.0 for m in methods}, notes=["a note " * 40], command="xai-toolbox demo --quick " + "--x " * 80,
    )


def test_report_in_a_real_browser(browser: Any, artefacts: Path, tmp_path: Path) -> None:
    report = _big_report(tmp_path / "report.html")
    visit = Visit(browser, report.as_uri())
    visit.check(scroll_containers_allowed=False)  # the report itself must fit: no scroll boxes
    page = visit.page
    assert page.evaluate("document.querySelectorAll('details.page').length") == 2
    # The inputs head the gallery while its rows scroll by.
    page.evaluate("document.querySelector('table.gallery tbody tr:nth-child(20)').scrollIntoView()")
    head = page.evaluate("document.querySelector('table.gallery thead th').getBoundingClientRect().top")
    assert 0 <= head < 5, f"the gallery's inputs did not stay at the top ({head})"
    # Open the second page of images too: it fits as well, and its images decode.
    page.evaluate("document.querySelectorAll('details.page')[1].open = true")
    visit.check(scroll_containers_allowed=False)
    visit.screenshot(artefacts / "report.png")


def test_report_fits_a_narrow_window(browser: Any, artefacts: Path, tmp_path: Path) -> None:
    report = _big_report(tmp_path / "report.html")
    visit = Visit(browser, report.as_uri())
    visit.page.set_viewport_size({"width": 900, "height": HEIGHT})
    assert visit.page.evaluate("document.documentElement.scrollWidth") <= 900
    visit.page.screenshot(path=str(artefacts / "report-900px.png"))


# -- the docs site -----------------------------------------------------------------------------
DOC_PAGES = {
    "": "home",
    "getting-started/": "getting-started",
    "tutorials/pytorch-quickstart/": "tutorial-pytorch",
    "tutorials/keras-quickstart/": "tutorial-keras",
    "tutorials/writing-a-plugin/": "tutorial-plugin",
    "gallery/": "gallery",
    "methods/integrated_gradients/": "method-ig",
    "methods/sobol/": "method-sobol",
    "metrics/deletion/": "metric-deletion",
    "metrics/mufidelity/": "metric-mufidelity",
    "api/": "api",
}
#: Pages whose formulas must render.
MATH_PAGES = ("methods/integrated_gradients/", "methods/sobol/", "metrics/deletion/", "metrics/mufidelity/")


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The built docs site served on 127.0.0.1 (a random port) for the module's tests."""
    folder = os.environ.get("XAI_TOOLBOX_SITE")
    if not folder:
        pytest.skip("no built docs site: set XAI_TOOLBOX_SITE=<site dir> (tox -e browser builds one)")
    root = Path(folder)
    if not (root / "index.html").is_file():
        pytest.skip(f"XAI_TOOLBOX_SITE={folder} holds no built site (no index.html)")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


@pytest.mark.parametrize("path", list(DOC_PAGES))
def test_docs_page_in_a_real_browser(browser: Any, site: str, artefacts: Path, path: str) -> None:
    visit = Visit(browser, site + path, local_hosts=("127.0.0.1",))
    visit.check(scroll_containers_allowed=True)
    page = visit.page
    if path in MATH_PAGES:
        raw = page.evaluate(
            "[...document.querySelectorAll('.arithmatex')].filter(e => !e.querySelector('.katex'))"
            ".map(e => e.textContent.slice(0, 60))"
        )
        assert not raw, f"formulas shown as raw TeX: {raw[:3]}"
        assert page.evaluate("document.querySelectorAll('.katex').length") > 0
        assert page.evaluate("document.querySelectorAll('.katex-error').length") == 0
        fonts = page.evaluate("document.fonts.check('16px KaTeX_Main')")
        assert fonts, "KaTeX's fonts did not load"
    if path == "api/":
        clipped = page.evaluate(
            "[...document.querySelectorAll('.doc-signature pre, pre.doc-signature, .doc-signature code')]"
            ".filter(e => e.scrollWidth > e.clientWidth + 2).map(e => e.textContent.slice(0, 60))"
        )
        assert not clipped, f"signatures wider than their box: {clipped[:3]}"
    if path.startswith(("tutorials/", "gallery")):
        assert page.evaluate("document.querySelectorAll('.md-content img').length") > 0
    visit.screenshot(artefacts / f"docs-{DOC_PAGES[path]}.png")
