"""The HTML report: structure, self-containment, escaping, best-value marking, ranking."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from xai_toolbox.base import MetricResult
from xai_toolbox.report import (
    Score,
    collect_scores,
    format_summary,
    png_data_uri,
    rank_methods,
    render_report,
    software_versions,
    write_report,
)

pytest.importorskip("PIL")

EVIL = "<script>alert(1)</script>"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Structure(HTMLParser):
    """Checks that every non-void element is closed in order, and collects what tests need."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.seen: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.scripts = 0
        self.text: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        if tag == "script":
            self.scripts += 1
        for name, value in attrs:
            if name in ("href", "src") and value and not value.startswith(("data:", "#")):
                self.links.append(value)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)  # <rect .../> inside SVG: balanced by construction

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Structure:
    parser = Structure()
    parser.feed(page)
    parser.close()
    return parser


def check_html(page: str) -> Structure:
    """Assert the page is well-formed, self-contained HTML5; return the parse."""
    s = parse(page)
    assert s.doctype, "missing <!DOCTYPE html>"
    assert not s.errors, s.errors[:5]
    assert not s.stack, f"unclosed elements: {s.stack}"
    for tag in ("html", "head", "body", "main", "table", "section"):
        assert tag in s.seen
    assert s.scripts == 0, "the report must not contain scripts"
    assert not s.links, f"external references: {s.links[:3]}"
    assert s.images and all(str(img.get("src", "")).startswith("data:image/png;base64,") for img in s.images)
    return s


def _curves(rng: np.random.Generator, n: int, steps: int) -> np.ndarray:
    return np.sort(rng.random((n, steps + 1)), axis=1)[:, ::-1].copy()


def _results(rng: np.random.Generator, n: int = 3) -> dict[str, dict[str, MetricResult]]:
    out: dict[str, dict[str, MetricResult]] = {}
    # Means chosen so that "a" wins deletion (lower is better) and "b" wins insertion.
    for method, (d, i, p) in {"a": (0.1, 0.5, 1.0), "b": (0.3, 0.9, 0.0), EVIL: (0.2, 0.7, 0.5)}.items():
        curves = _curves(rng, n, 5)
        out[method] = {
            "deletion": MetricResult("deletion", np.full(n, d), False, curves,
                                     {"fractions": np.linspace(0, 1, 6)}),
            "insertion": MetricResult("insertion", np.full(n, i), True, curves[:, ::-1].copy()),
            "pointing_game": MetricResult("pointing_game", np.full(n, p), True),
        }
    return out


@pytest.fixture
def page() -> str:
    rng = np.random.default_rng(0)
    images = rng.random((3, 12, 12, 3), dtype=np.float32)
    maps = {m: rng.random((3, 12, 12), dtype=np.float32) for m in ("a", "b", EVIL)}
    return render_report(
        images=images,
        maps=maps,
        results=_results(rng),
        names=[f"{EVIL}.png", "../../x.png", "ok.png"],
        labels=[0, 1, 2],
        predictions=[0, 2, 2],
        class_names=["cat", EVIL, "dog"],
        settings={"seed": 0, "methods": {"a": {"steps": 3}, EVIL: {}}, "note": EVIL},
        timings={"a": 1.0, "b": 2.5},
        notes=[f"note {EVIL}"],
        title=f"report {EVIL}",
    )


def test_report_is_well_formed_and_self_contained(page: str) -> None:
    s = check_html(page)
    # Per image: the input + one overlay per method.
    assert len(s.images) == 3 * (1 + 3)
    assert "cdn" not in page.lower() and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    for img in s.images[:4]:
        raw = base64.b64decode(str(img["src"]).split(",", 1)[1])
        from PIL import Image

        with Image.open(io.BytesIO(raw)) as picture:
            assert picture.format == "PNG" and picture.size == (12, 12)


def test_user_strings_are_escaped(page: str) -> None:
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    s = parse(page)
    text = "".join(s.text)
    # Shown as text everywhere: title, notes, method names, class names, file names, settings.
    assert text.count(EVIL) >= 6
    alts = [str(img.get("alt")) for img in s.images]
    assert f"{EVIL}.png" in alts  # attribute values are escaped, and decode back to the name


def test_scores_table_marks_the_best_per_column(page: str) -> None:
    table = page[page.index('<table class="scores">') : page.index("</table>", page.index('<table class="scores">'))]
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    header, body = rows[0], rows[1:]
    columns = re.findall(r"<th[^>]*>(.*?)</th>", header)
    assert columns[:3] == ["rank", "method", "mean rank"]
    assert columns[3:6] == ["deletion ↓", "insertion ↑", "pointing_<wbr/>game ↑"]
    best = {}
    for row in body:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        method = cells[1]
        for col, cell_html in zip(columns[3:6], re.findall(r"<td([^>]*)>", row)[3:6], strict=True):
            if 'class="best"' in cell_html:
                best.setdefault(col, []).append(method)
    assert best == {"deletion ↓": ["a"], "insertion ↑": ["b"], "pointing_<wbr/>game ↑": ["a"]}
    # Ranked by mean rank: a (1, 3, 1) -> 1.67, b (3, 1, 3) -> 2.33, EVIL (2, 2, 2) -> 2.
    assert [re.findall(r"<td[^>]*>(.*?)</td>", r)[1] for r in body] == ["a", "&lt;script&gt;alert(1)&lt;/script&gt;", "b"]


def test_curves_are_inline_svg(page: str) -> None:
    charts = re.findall(r'<figure class="chart">.*?</figure>', page, re.DOTALL)
    assert len(charts) == 2  # deletion and insertion; pointing_game has no curves
    assert page.count("<polyline") == 2 * 3
    assert page.count("<polygon") == 2 * 3  # a 95 % band per method (3 images each)
    assert "data:image/svg" not in page
    deletion = charts[0]
    assert "fraction of pixels removed (most relevant first)" in deletion  # x-axis label
    assert "model score" in deletion  # y-axis label
    strokes = re.findall(r'<polyline fill="none" stroke="(#[0-9a-f]{6})"', deletion)
    assert len(set(strokes)) == 3  # one colour per method


def test_curve_axes_follow_small_scores() -> None:
    """Small scores get their own axis range and round ticks, not a flat line on [0, 1]."""
    from xai_toolbox._report_svg import curve_chart, nice_ticks

    curves = np.linspace(0.004, 0.001, 6)[None, :] + np.array([[0.0], [0.0005]])
    res = MetricResult("deletion", curves.mean(axis=1), False, curves)
    chart = curve_chart("deletion", {"m": res}, {"m": "#1f77b4"})
    ticks = re.findall(r'text-anchor="end">([^<]*)</text>', chart)
    assert ticks == ["0.001", "0.002", "0.003", "0.004", "0.005"]
    assert nice_ticks(0.0, 0.93) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(-0.3, 2.7) == [-1.0, 0.0, 1.0, 2.0, 3.0]


def test_prediction_mistakes_are_flagged(page: str) -> None:
    assert page.count('class="wrong"') == 1  # image 1: label EVIL, predicted dog


def test_gallery_rows_are_methods_and_pages_fit_1280_px() -> None:
    from xai_toolbox._report_gallery import gallery_width

    rng = np.random.default_rng(8)
    images = rng.random((11, 8, 8, 3), dtype=np.float32)
    signed = rng.normal(size=(11, 8, 8)).astype(np.float32)
    maps = {f"m{i}": rng.random((11, 8, 8), dtype=np.float32) for i in range(12)} | {"signed": signed}
    page = render_report(images=images, maps=maps, per_page=4, names=[f"img{i}" for i in range(11)])
    check_html(page)
    pages = re.findall(r'<details class="page"( open)?>', page)
    assert pages == [" open", "", ""]  # 4 + 4 + 3 images, the first page open
    assert "Images 9–11 of 11" in page
    first = page[page.index('<table class="gallery"') : page.index("</table>", page.index('<table class="gallery"'))]
    assert first.count('<th scope="row" class="method">') == 13  # one row per method
    assert first.count("<img") == 4 + 13 * 4  # the inputs on top, then 4 overlays per method
    widths = [int(w) for w in re.findall(r'class="gallery" style="width:(\d+)px"', page)]
    assert widths == [gallery_width(4)] * 2 + [gallery_width(3)]
    assert gallery_width(8) <= 1280 - 2 * 16  # the default page of 8 fits a 1280 px window
    signed_row = first[first.index(">signed<svg") :]
    assert "−s" in signed_row.split("</tr>")[0] and ">signed</span>" in signed_row.split("</tr>")[0]
    assert ">positive part</span>" in first


def test_hovering_a_picture_shows_its_scores_and_scale(page: str) -> None:
    titles = re.findall(r'<img [^>]*alt="a on ok.png"[^>]*title="([^"]*)"', page)
    assert len(titles) == 1
    tip = titles[0]
    assert tip.startswith("a on ok.png&#10;s = ")
    assert "deletion: 0.1" in tip and "insertion: 0.5" in tip and "pointing_game: 1" in tip
    cells = re.findall(r'<td class="best" title="([^"]*)"', page)
    assert any("per image: 0.100, 0.100, 0.100" in c for c in cells)


def test_many_metrics_split_the_score_table_by_family() -> None:
    rng = np.random.default_rng(9)
    results = {}
    for method in ("a", "b"):
        results[method] = {}
        for i in range(12):
            name = f"fid{i}" if i < 8 else f"loc{i}"
            res = MetricResult(name, rng.random(4), True, family="fidelity" if i < 8 else "localisation")
            results[method][name] = res
    page = render_report(images=rng.random((4, 8, 8, 3)), maps={"a": rng.random((4, 8, 8))}, results=results)
    check_html(page)
    captions = re.findall(r'<table class="scores"><caption>([^<]*)</caption>', page)
    assert captions == ["fidelity", "localisation"]


def test_resolved_parameters_and_reproduce_command() -> None:
    from xai_toolbox.evaluation import EvaluationTable
    from xai_toolbox.report import reproduce_command

    rng = np.random.default_rng(10)
    table = EvaluationTable(params={"methods": {"rise": {"nb_samples": 50}}, "metrics": {}})
    table.resolved_params = {
        "methods": {"rise": {"nb_samples": 50, "grid_size": 7, "seed": None, "progress": None},
                    "gradcam": {"layer": "features.3", "batch_size": 64}},
        "metrics": {"deletion": {"steps": 20, "activation": "softmax", "score_fn": np.mean}},
    }
    page = render_report(images=rng.random((2, 8, 8, 3)), maps={"rise": rng.random((2, 8, 8))},
                         results=table, settings={"methods": {"rise": {}}, "seed": 3},
                         command="xai-toolbox demo --quick")
    check_html(page)
    settings = page[page.index('<section id="settings">') :]
    assert '<pre class="command"><code>xai-toolbox demo --quick</code></pre>' in settings
    assert "<tr><th>nb_samples</th><td><strong>50</strong></td></tr>" in settings  # given: bold
    assert "<tr><th>grid_size</th><td>7</td></tr>" in settings  # a default, resolved
    assert "<tr><th>layer</th><td>features.3</td></tr>" in settings  # the layer the CAM picked
    assert "(unseeded)" in settings and "<th>progress</th>" not in settings
    assert "<td>mean</td>" in settings  # a callable by name
    assert ">defaults<" not in page
    assert reproduce_command(["/venv/bin/xai-toolbox", "demo", "--out", "my dir"]) == "xai-toolbox demo --out 'my dir'"
    assert reproduce_command(["/usr/bin/pytest", "-q"]) is None


def test_settings_and_versions(page: str) -> None:
    settings = page[page.index('<section id="settings">') :]
    for key in ("seed", "steps", "python", "numpy", "xai-toolbox"):
        assert f"<th>{key}</th>" in settings
    versions = software_versions()
    assert versions["numpy"] == np.__version__
    assert set(versions) >= {"python", "numpy", "xai-toolbox", "platform"}


def test_gallery_only_and_image_limit(tmp_path) -> None:
    rng = np.random.default_rng(1)
    images = rng.random((5, 3, 8, 8), dtype=np.float32)  # channels first: read from the argument
    path = write_report(
        tmp_path / "sub" / "r.html", images=images, maps={"m": rng.random((5, 8, 8))},
        channels_first=True, max_images=2,
    )
    page = path.read_text(encoding="utf-8")
    s = check_html(page)
    assert len(s.images) == 2 * 2
    assert "Showing the first 2 of 5 images" in page
    assert 'id="scores"' not in page


def test_report_rejects_mismatched_inputs() -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="2 maps for 3 images"):
        render_report(images=rng.random((3, 8, 8, 3)), maps={"m": rng.random((2, 8, 8))})
    with pytest.raises(ValueError, match="2 names for 3 images"):
        render_report(images=rng.random((3, 8, 8, 3)), maps={"m": rng.random((3, 8, 8))}, names=["a", "b"])


def test_rank_methods_with_ties_and_missing_scores() -> None:
    scores = [
        Score("a", "m1", 1.0, True), Score("b", "m1", 1.0, True), Score("c", "m1", 0.0, True),
        Score("a", "m2", 5.0, False), Score("b", "m2", 1.0, False),
        Score("c", "m2", float("nan"), False),
    ]
    # m1: a and b tie for 1-2 (1.5 each), c is 3; m2: b 1, a 2, c left out.
    assert rank_methods(scores) == [("b", 1.25), ("a", 1.75), ("c", 3.0)]


def test_collect_scores_accepts_records_and_tables() -> None:
    res = MetricResult("deletion", np.array([0.2, 0.4]), False)
    from_dict = collect_scores({"rise": {"deletion": res}})
    assert from_dict[0].mean == pytest.approx(0.3) and from_dict[0].n == 2 and not from_dict[0].higher_is_better
    records = [{"method": "rise", "metric": "deletion", "score": 0.3, "higher_is_better": False, "result": res}]

    class Table:
        def __init__(self) -> None:
            self.records = records

    assert collect_scores(Table())[0].std == pytest.approx(0.1)
    plain = collect_scores([{"method": "x", "metric": "y", "score": 2.0, "higher_is_better": True}])
    assert plain == [Score("x", "y", 2.0, True)]


def test_format_summary_text() -> None:
    text = format_summary(collect_scores(_results(np.random.default_rng(3))), {"a": 1.25})
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["rank", "method", "mean"]
    assert "deletion ↓" in lines[0] and "insertion ↑" in lines[0]
    assert lines[2].split()[1] == "a" and "0.100*" in lines[2] and lines[2].endswith("1.2")


def test_png_data_uri_downscales_large_pictures() -> None:
    from PIL import Image

    uri = png_data_uri(np.random.default_rng(4).random((600, 300, 3)))
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as picture:
        assert picture.size == (128, 256)
