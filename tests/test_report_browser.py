"""report.html in headless Chromium: no console errors, every image decoded, a screenshot that is not blank."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from miniplaces.report import build_report

# The browser on PATH under the names Debian, Ubuntu and Google give it.
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM = next((Path(found) for found in map(shutil.which, BROWSERS) if found), None)
WIDTH = 1400  # a laptop's browser window
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Injected at the top of a copy of the page: records errors (script, console, failed images) and, after
# the load event, writes every image's decoded size into the DOM that --dump-dom prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(
  "error: " + (e.message || (e.target && e.target.outerHTML || "").slice(0, 120))), true);
const consoleError = console.error;
console.error = (...args) => { window.__errors.push("console.error: " + args.join(" ")); consoleError(...args); };
window.addEventListener("load", () => {
  const images = Array.from(document.images).map(i => ({alt: i.alt, width: i.naturalWidth, height: i.naturalHeight}));
  const pre = document.createElement("pre");
  pre.id = "probe";
  const main = document.querySelector("table");
  const layout = {page: document.documentElement.scrollWidth, table: main.getBoundingClientRect().width,
                  headers: Array.from(main.querySelectorAll("th")).map(h => {
                    const range = document.createRange();
                    range.selectNodeContents(h);
                    return range.getClientRects().length;  // one rectangle per line of text
                  })};
  pre.textContent = JSON.stringify({images: images, errors: window.__errors, layout: layout});
  document.body.appendChild(pre);
});
</script>"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason=f"none of {', '.join(BROWSERS)} on PATH (Debian package `chromium`)"),
]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_report_html_renders_in_chromium(produced_runs: Path, tmp_path: Path) -> None:
    report = build_report([produced_runs], tmp_path / "report")
    page = report.html.read_text()
    assert "<script" not in page  # the page itself runs nothing
    probed = tmp_path / "report" / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1))

    result = chromium(tmp_path, "--enable-logging=stderr", "--v=0", f"--window-size={WIDTH},1000", "--dump-dom",
                      probed.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the page's load event never ran; stderr: {result.stderr[-2000:]}"
    probe = json.loads(match.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert probe["errors"] == []
    assert [line for line in result.stderr.splitlines() if ":CONSOLE" in line] == []
    assert len(probe["images"]) == len(report.figures) + len(report.grids) + len(report.confusion) == 8
    for image in probe["images"]:
        assert image["width"] > 0 and image["height"] > 0, image
    # At 1,400 px the page does not scroll sideways, and the main results table's headers each fit on one line.
    layout = probe["layout"]
    assert layout["page"] <= WIDTH and layout["table"] < WIDTH * 0.8, layout
    assert layout["headers"] and set(layout["headers"]) == {1}, layout

    screenshot = tmp_path / "report.png"
    result = chromium(tmp_path, "--hide-scrollbars", f"--window-size={WIDTH},2400", f"--screenshot={screenshot}",
                      report.html.as_uri())
    assert result.returncode == 0 and screenshot.is_file(), result.stderr[-2000:]
    with Image.open(screenshot) as shot:
        assert shot.size == (WIDTH, 2400)
        colours = shot.convert("RGB").resize((64, 120)).getcolors(64 * 120)
        assert colours is not None and len(colours) > 20  # text, table and plots, not a blank page
    keep = os.environ.get("MINIPLACES_SCREENSHOT_DIR")
    if keep:
        shutil.copyfile(screenshot, Path(keep) / "report_screenshot.png")
