"""The lab's reports: report.html (self-contained, escaped, every chart, robust to missing data,
and loaded for real in headless Chromium) and junit.xml (counts, failure texts, escaping).
Rows are synthetic (report_samples.py): no export runs here."""

from __future__ import annotations

import copy
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
from chromium import _decode_png, available, load, read_png, region_stats, screenshot
from report_samples import RUN_TIMES, accuracy, row, sample_lab

from edge_export.lab.html import render_html, write_html
from edge_export.lab.junit import write_junit
from edge_export.lab.reportdata import failure_lines, main_metric, pareto_front

NASTY_MODEL = '<img src=x onerror=alert(1)> "Bob\'s" & co'
NASTY_FAILURE = (
    "onnx:int8-dynamic: accuracy gates failed: cosine_min=0.5 (needs >= 0.99) <script>alert(2)</script>"
)
GATE_TEXT = "onnx:int4-weight: accuracy gates failed: embedding_cosine_min=0.962 (needs >= 0.98)"


def nasty_rows(run_id: str = "run-4") -> list[dict]:
    """A user-named model with a failing cell whose message carries markup and an ANSI escape."""
    acc = accuracy("onnx:int8-dynamic", {"cosine_min": 0.5}, "cosine_min")
    acc["failure"] = NASTY_FAILURE + "\x1b[31m"
    samples = [4.0, 4.2, 4.1, 4.4, 3.9]
    return [
        row(run_id, RUN_TIMES[-1], NASTY_MODEL, "onnx:int8-dynamic", "local", status="failed", size_mb=12.0,
            acc=acc, samples=samples, failures=[acc["failure"]]),
    ]  # fmt: skip


def full_lab() -> tuple[list[dict], list[dict], dict]:
    rows, history, run = sample_lab()
    return rows + nasty_rows(), history, run


def test_html_is_self_contained_with_every_section(tmp_path: Path) -> None:
    rows, history, run = full_lab()
    page = write_html(tmp_path / "out" / "report.html", rows, history, run).read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    for external in ("<link", "@import", "url(", "<iframe", "<object", "<embed", "<img"):
        assert external not in page.lower(), external
    assert "default-src 'none'" in page  # the browser itself refuses any other load
    models, devices = 3, 2
    assert len(re.findall(r'<svg class="chart" id="pareto-\d+"', page)) == models
    assert len(re.findall(r'<svg class="chart" id="latency-\d+"', page)) == devices
    assert len(re.findall(r'<svg class="chart" id="trend-\d+"', page)) == len(rows)
    assert page.count("<tr><td>") == 6 + 4 + 1  # one matrix row per (model, recipe)
    counts = {
        s: re.search(rf'id="count-{s}">(\d+)', page).group(1)
        for s in ("passed", "failed", "error", "not_run")
    }
    assert counts == {"passed": "16", "failed": "3", "error": "1", "not_run": "1"}
    # what failed and why, in the matrix
    assert GATE_TEXT.replace(">", "&gt;") in page
    assert "pi: device dropped mid-run: ssh connection reset by peer" in page
    assert "pi: the executorch runtime is not installed on this device" in page
    assert "marker area: p50 on local" in page and "Pareto front" in page
    # the trend caption of a cell: this run's p50 and its change against the run before
    cell = "minilm|onnx:int8-dynamic|pi"
    now = next(r["p50_ms"] for r in rows if r["cell"] == cell)
    before = next(r["p50_ms"] for r in history if r["cell"] == cell and r["run_id"] == "run-3")
    assert f'{cell} <span class="tag">{now:.4g} ms, {now / before - 1:+.0%} vs previous</span>' in page


def test_html_escapes_user_text(tmp_path: Path) -> None:
    rows, history, run = full_lab()
    run = dict(run, labels={"branch": "<b>feature</b>"})
    page = render_html(rows, history, run)
    assert NASTY_MODEL not in page and "<script>alert" not in page and "<b>feature" not in page
    assert "&lt;img src=x onerror=alert(1)&gt; &quot;Bob&#x27;s&quot; &amp; co" in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page and "&lt;b&gt;feature&lt;/b&gt;" in page
    assert "\x1b" not in page and "[31m" in page  # the control character is gone, the rest is kept
    assert len(re.findall(r"<script>", page)) == 2  # only the report's own two scripts


def test_html_survives_rows_with_missing_fields(tmp_path: Path) -> None:
    """Error rows without accuracy or latency, not_run rows, rows that carry almost nothing, NaN
    metrics, an empty history and an empty run: a report with 'no data' where data is missing."""
    bare = {"run_id": "r", "model": "m", "recipe": "onnx:fp32", "device": "local", "status": "error"}
    not_run = bare | {
        "recipe": "coreml:fp16",
        "status": "not_run",
        "latency": {"device": "local", "not_run": "needs macOS"},
    }
    odd = bare | {"recipe": "onnx:int8", "status": "weird", "accuracy": {"metrics": {"cosine_min": "nan"}},
                  "samples_ms": [None, "x", float("nan")], "size_bytes": None, "result": None}  # fmt: skip
    nameless = {"status": "passed"}
    page = render_html([bare, not_run, odd, nameless], [], {})
    assert "needs macOS" in page and "no data" in page
    assert page.count('aria-label="m: cosine_min: no data"') == 1  # no point has both size and accuracy
    assert "no data: no latency samples on this device" in page
    assert 'id="count-error">2' in page  # an unknown status counts as an error, never as passed
    empty = render_html([], [], {"run_id": "empty-run"})
    assert "no data: this run recorded no cells" in empty and "empty-run" in empty
    for chart in ("pareto-0", "latency-0", "trend-0"):
        assert f'id="{chart}"' in empty
    write_junit(tmp_path / "junit.xml", [bare, not_run, odd, nameless], {})
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("errors"), suite.get("skipped")) == ("4", "2", "1")


def test_junit_counts_messages_and_escaping(tmp_path: Path) -> None:
    rows, _, run = full_lab()
    path = write_junit(tmp_path / "ci" / "junit.xml", rows, run)
    root = ET.parse(path).getroot()
    suites = root.findall("testsuite")
    assert len(suites) == 1 and suites[0].get("name") == "run-4"
    suite = suites[0]
    cases = suite.findall("testcase")
    assert len(cases) == len(rows) == 21
    counted = {
        tag: sum(1 for c in cases if c.find(tag) is not None) for tag in ("failure", "error", "skipped")
    }
    assert counted == {"failure": 3, "error": 1, "skipped": 1}
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == (
        "21",
        "3",
        "1",
        "1",
    )
    assert root.get("tests") == "21"
    by_name = {(c.get("classname"), c.get("name")): c for c in cases}
    failed = by_name["minilm", "onnx:int4-weight@pi"].find("failure")
    assert failed.get("message") == GATE_TEXT and failed.get("type") == "gate"
    errored = by_name["smollm2", "tflite:int8-dynamic@pi"].find("error")
    assert errored.get("type") == "DeviceError" and "connection reset by peer" in errored.get("message")
    skipped = by_name["minilm", "executorch:fp32@pi"].find("skipped")
    assert skipped.get("message") == "pi: the executorch runtime is not installed on this device"
    assert by_name["minilm", "onnx:fp32@local"].get("time") == "22.700"  # export + validate + latency
    nasty = by_name[NASTY_MODEL, "onnx:int8-dynamic@local"].find("failure")
    assert nasty.get("message") == NASTY_FAILURE + "\ufffd[31m"  # round-trips, minus the control code
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties == {"branch": "main", "ci_job": "lab-nightly", "commit": "3f9c2e1"}


def test_failure_lines_fall_back_to_the_gates_and_errors() -> None:
    acc = accuracy("onnx:int4", {"embedding_cosine_min": 0.9, "sqnr_db": 3.0}, "embedding_cosine_min")
    gates_only = {"status": "failed", "accuracy": dict(acc, failure=None)}
    assert failure_lines(gates_only) == ["embedding_cosine_min=0.9 (needs >= 0.98)"]
    device = {"status": "error", "device": "pi", "result": {"latency_by_device": [
        {"device": "local"}, {"device": "pi", "error": {"type": "DeviceError", "message": "pi: gone"}}]}}  # fmt: skip
    assert failure_lines(device) == ["pi: gone"]


def test_pareto_front_and_main_metric() -> None:
    # (size, accuracy, latency): 0 smallest; 1 most accurate; 2 dominated by 0; 3 fastest
    points = [(10, 0.95, 5.0), (90, 1.0, 6.0), (20, 0.94, 7.0), (95, 0.99, 1.0), (95, 0.99, None)]
    assert pareto_front(points, (False, True, False)) == [0, 1, 3]
    assert pareto_front([(1, 1.0), (1, 1.0)], (False, True)) == [0, 1]  # ties dominate neither
    encoder = [{"accuracy": {"metrics": {"sqnr_db": 1, "embedding_cosine_min": 0.9}}}]
    decoder = [
        {"accuracy": {"metrics": {"next_token_agreement": 1, "perplexity_delta_pct": 2}}},
        {"accuracy": None},
    ]
    assert main_metric(encoder) == ("embedding_cosine_min", True)
    assert main_metric(decoder) == ("perplexity_delta_pct", False)
    assert main_metric([{"status": "error"}]) is None


def _png(pixels: np.ndarray) -> bytes:
    """An RGB PNG whose rows use the five filter types in turn (to test the fallback decoder)."""
    height, width, _ = pixels.shape
    raw, previous = b"", np.zeros(width * 3, dtype=np.int64)
    for y in range(height):
        line = pixels[y].reshape(-1).astype(np.int64)
        left = np.concatenate([np.zeros(3, dtype=np.int64), line[:-3]])
        corner = np.concatenate([np.zeros(3, dtype=np.int64), previous[:-3]])
        estimate = left + previous - corner
        pa, pb, pc = abs(estimate - left), abs(estimate - previous), abs(estimate - corner)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, previous, corner))
        predictor = [0, left, previous, (left + previous) // 2, paeth][y % 5]
        raw += bytes([y % 5]) + ((line - predictor) % 256).astype(np.uint8).tobytes()
        previous = line

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_fallback_png_decoder_handles_every_filter() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(11, 7, 3), dtype=np.uint8)
    assert np.array_equal(_decode_png(_png(pixels)), pixels)


def require_chromium() -> None:
    """A missing Chromium is a broken set-up, not a missing device: fail, never skip."""
    if not available():
        pytest.fail("chromium is not installed: run `make setup` (installs Debian's chromium)")


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """From file://: no console output at all (errors, blocked loads), the page's script ran to
    the end, and in a screenshot every chart with data shows coloured marks where a 'no data'
    chart shows only grey text in its frame."""
    require_chromium()
    rows, history, run = full_lab()
    page = write_html(tmp_path / "report.html", rows, history, run)
    loaded = load(page)
    assert loaded.console == [] and loaded.page_errors == ""
    assert loaded.ready, loaded.dom[-2000:]
    charts = dict(re.findall(r'<svg class="chart" id="([\w-]+)"[^>]*aria-label="([^"]*)"', page.read_text()))
    assert set(loaded.chart_rects) == set(charts) and len(charts) == 3 + 2 + 21
    png = screenshot(page, tmp_path / "report.png", loaded.page_height)
    pixels = read_png(png)
    assert pixels.shape[:2] == (loaded.page_height, 1400)
    for chart, rect in loaded.chart_rects.items():
        x, y, width, height = rect
        assert width > 100 and height > 50 and y + height <= loaded.page_height, (chart, rect)
        colours, inked, coloured = region_stats(pixels, [x + 3, y + 3, width - 6, height - 6])  # in the frame
        if charts[chart].endswith("no data"):  # grey text in a frame, nothing drawn
            assert coloured == 0, (chart, colours, coloured)
        else:  # markers, boxes, lines in colour
            assert coloured > 0.001 and colours > 100 and inked > 0.02, (chart, colours, inked, coloured)
    no_data = [c for c, label in charts.items() if label.endswith("no data")]
    assert len(no_data) == 2  # executorch on the Pi (not run) and tflite on the Pi (error): no trend


def test_browser_check_sees_script_errors_and_blocked_loads(tmp_path: Path) -> None:
    """The check above can fail: an external image and a broken script are both reported."""
    require_chromium()
    rows, history, run = sample_lab()
    broken = render_html(copy.deepcopy(rows), history, run).replace(
        '<pre id="js-errors"></pre>',
        '<pre id="js-errors"></pre><img src="https://example.invalid/pixel.png"><script>noSuchFunction()</script>',
    )
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    loaded = load(page)
    assert not loaded.ready
    assert "noSuchFunction" in loaded.page_errors
    assert any("example.invalid" in line for line in loaded.console)
    assert any("noSuchFunction" in line for line in loaded.console)
