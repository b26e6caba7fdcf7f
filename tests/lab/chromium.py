"""Drive Debian's headless Chromium over file:// (no server, no debugging port, nothing bound):
load a page and read back its DOM and console, take a screenshot, and measure what the
screenshot shows inside given rectangles.

Chromium prints dbus/GPU warnings on stderr in a container; only its `CONSOLE` lines (what the
page logged: uncaught errors, blocked loads, console.error) matter. We run as root, so
--no-sandbox is required. Each call gets its own profile directory, so parallel runs don't share one.

Run by hand to refresh the README screenshot:  .venv/bin/python tests/lab/chromium.py docs/lab-report.png
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path

import numpy as np

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH = 1400
CONSOLE_LINE = re.compile(r":CONSOLE[:(]")  # "INFO:CONSOLE:8] ..." (older builds: "CONSOLE(8)")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
    "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--enable-logging=stderr", "--v=0",
)  # fmt: skip


@dataclass
class PageLoad:
    """What a page did when loaded: its DOM after the scripts ran, what it logged, and the
    attributes the lab report's script writes on <html>."""

    dom: str
    console: list[str]
    ready: bool
    page_errors: str
    chart_rects: dict[str, list[int]] = field(default_factory=dict)
    page_height: int = 0


def available() -> bool:
    """Whether a Chromium binary is installed (`make setup` installs Debian's)."""
    return Path(CHROMIUM).exists()


def _chromium(args: list[str], height: int, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="lab-chromium-") as profile:
        command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def load(page: Path, height: int = 2000) -> PageLoad:
    """Load `page` from file:// and return its DOM (--dump-dom) and every console line."""
    done = _chromium(["--dump-dom", page.resolve().as_uri()], height)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    console = [line for line in done.stderr.splitlines() if CONSOLE_LINE.search(line)]
    root = re.search(r"<html\b[^>]*>", done.stdout)
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', root.group(0))) if root else {}
    errors = re.search(r'<pre id="js-errors">(.*?)</pre>', done.stdout, re.S)
    return PageLoad(
        dom=done.stdout,
        console=console,
        ready=attributes.get("data-report-ready") == "ok",
        page_errors=unescape(errors.group(1)) if errors else "(no #js-errors element)",
        chart_rects=json.loads(unescape(attributes.get("data-chart-rects", "{}"))),
        page_height=int(attributes.get("data-page-height", "0") or 0),
    )


def screenshot(page: Path, png: Path, height: int) -> Path:
    """A PNG of the top `height` pixels of `page` at WIDTH pixels wide (scale factor 1)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    done = _chromium([f"--screenshot={png.resolve()}", page.resolve().as_uri()], height)
    if done.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium screenshot failed ({done.returncode}): {done.stderr[-2000:]}")
    return png


def read_png(png: Path) -> np.ndarray:
    """The pixels of an 8-bit PNG as a (height, width, 3) uint8 array: with Pillow when it is
    installed (it comes with the tflite extra), else decoded here (zlib + the PNG filters; slower)."""
    try:
        from PIL import Image
    except ImportError:
        return _decode_png(png.read_bytes())
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


def _decode_png(data: bytes) -> np.ndarray:
    """Minimal decoder for what Chromium writes: 8-bit RGB or RGBA, not interlaced."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    position, chunks, header = 8, [], b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        header = body if kind == b"IHDR" else header
        chunks += [body] if kind == b"IDAT" else []
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {colour}, interlace {interlace})")
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw = zlib.decompress(b"".join(chunks))
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        previous = line
        rows.append(bytes(line))
    pixels = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(height, width, channels)
    return pixels[:, :, :3]


def region_stats(pixels: np.ndarray, rect: list[int]) -> tuple[int, float, float]:
    """Inside rect = [x, y, w, h]: (distinct colours, share of pixels that are not near-white,
    share of coloured pixels: channels apart by > 60, i.e. not the grey of text, grid or frame)."""
    x, y, w, h = rect
    region = pixels[max(y, 0) : y + h, max(x, 0) : x + w].reshape(-1, 3).astype(np.int32)
    if not region.size:
        return 0, 0.0, 0.0
    packed = (region[:, 0] << 16) | (region[:, 1] << 8) | region[:, 2]
    chroma = region.max(axis=1) - region.min(axis=1)
    return len(np.unique(packed)), float((region.min(axis=1) < 235).mean()), float((chroma > 60).mean())


def save_docs_screenshot(png: Path, height: int = 1600) -> Path:
    """The README's picture of a lab report: the sample lab (report_samples.py) rendered and
    screenshotted from its top (header, matrix, Pareto plots, start of the latency charts)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from report_samples import sample_lab

    from edge_export.lab.html import write_html

    rows, history, run = sample_lab()
    with tempfile.TemporaryDirectory() as work:
        page = write_html(Path(work) / "report.html", rows, history, run)
        return screenshot(page, png, height)


if __name__ == "__main__":
    print(save_docs_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/lab-report.png")))
