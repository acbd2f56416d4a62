"""The `miniplaces serve` page in headless Chromium, driven over the DevTools protocol as a user would:
click an image, see top-5 and saliency maps; move the ε slider with the keyboard, see the prediction change."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from serve_models import TINY_VIT, train_checkpoint

from miniplaces.data.synth import synthesize

websocket = pytest.importorskip("websocket")  # websocket-client, in the dev extra
pytest.importorskip("werkzeug")

from miniplaces.serve.app import Server, build_app  # noqa: E402 (after the importorskip of the extra)

# The browser on PATH under the names Debian, Ubuntu and Google give it.
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM = next((Path(found) for found in map(shutil.which, BROWSERS) if found), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--mute-audio",
         "--remote-debugging-port=0", "--window-size=1360,1000"]
TORCH_THREADS = 1
SIZE = 32

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason=f"none of {', '.join(BROWSERS)} on PATH (Debian package `chromium`)"),
]


class Page:
    """One browser tab over the DevTools protocol; collects uncaught exceptions and console errors."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.errors: list[str] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(message["params"]["exceptionDetails"])[:500])
            elif message.get("method") == "Runtime.consoleAPICalled" and message["params"]["type"] == "error":
                self.errors.append(json.dumps(message["params"]["args"])[:500])
            elif (message.get("method") == "Log.entryAdded" and message["params"]["entry"]["level"] == "error"
                  and message["params"]["entry"]["source"] != "network"):  # e.g. a Content-Security-Policy refusal
                self.errors.append(json.dumps(message["params"]["entry"])[:500])
            elif message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:  # the page is still loading (no body yet, or a new execution context)
                value = None
            if value:
                return value
            time.sleep(0.1)
        status = self.evaluate("document.getElementById('status').textContent")
        raise AssertionError(f"timed out waiting for {expression}; the page says {status!r}; errors {self.errors}")

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element."""
        box = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                            "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def press(self, key: str, code: int) -> None:
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = synthesize(tmp_path_factory.mktemp("browser_synth"), classes=6, per_class=12, val_per_class=2,
                      image_size=SIZE, seed=0)
    folder = tmp_path_factory.mktemp("browser_checkpoints")
    checkpoints = [train_checkpoint(root, folder / "simplenet.pt", steps=25, image_size=SIZE),
                   train_checkpoint(root, folder / "vit.pt", "vit", steps=40, image_size=SIZE, **TINY_VIT)]
    with Server(build_app(checkpoints, root, threads=1), "127.0.0.1", 0) as running:
        yield running


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    profile = tmp_path / "profile"
    process = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"  # Chromium writes its debugging port here
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            assert process.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            targets = [t for t in json.load(response) if t["type"] == "page"]
        tab = Page(targets[0]["webSocketDebuggerUrl"])
        tab.call("Runtime.enable")
        tab.call("Log.enable")
        tab.call("Page.enable")
        yield tab
        tab.ws.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_pick_an_image_then_move_the_eps_slider(server: Server, page: Page, tmp_path: Path) -> None:
    page.call("Page.navigate", url=server.url)
    page.wait_for("document.body.dataset.ready === 'true'")
    assert page.evaluate("document.querySelectorAll('#gallery .thumb').length") == 12
    page.wait_for("Array.from(document.querySelectorAll('#gallery img')).every(i => i.naturalWidth > 0)")

    page.click('#gallery .thumb[data-id="val:3"]')
    # Both models show a top-5 and a saliency map.
    page.wait_for("document.querySelectorAll('#models article ol.top5 li').length === 10")
    page.wait_for("Array.from(document.querySelectorAll('#models img.saliency')).every(i => i.naturalWidth > 0)")
    columns = page.evaluate("""Array.from(document.querySelectorAll('#models article')).map(a => ({
        model: a.dataset.model, saliency: a.dataset.saliency, top1: a.dataset.top1,
        rows: Array.from(a.querySelectorAll('ol.top5 li')).map(li => li.textContent)}))""")
    assert [c["model"] for c in columns] == ["A", "B"]
    for column in columns:
        assert column["saliency"].startswith("vanilla:") and all("%" in row for row in column["rows"])
    assert page.evaluate("document.querySelector('.thumb.active').dataset.id") == "val:3"
    # The probability bars are sized through the CSSOM, which the page's Content-Security-Policy allows.
    assert page.evaluate("document.querySelector('#models ol.top5 .bar').style.width").endswith("%")
    assert "true class" in page.evaluate("document.getElementById('true-label').textContent")

    # Grad-CAM of another class, chosen in the menus.
    page.evaluate("""(() => { const a = document.querySelector('#models article[data-model="A"]');
        const m = a.querySelector('select.method'); m.value = 'gradcam'; m.dispatchEvent(new Event('change')); })()""")
    page.wait_for("""(document.querySelector('#models article[data-model="A"]').dataset.saliency || '')
        .startsWith('gradcam:')""")

    # The ε slider, moved with the keyboard: at 0 nothing changes, at its maximum the prediction does.
    page.wait_for("document.getElementById('attack-result').dataset.eps === '6'")
    page.evaluate("""(() => { const a = document.getElementById('attack'); a.value = 'pgd-untargeted';
        a.dispatchEvent(new Event('change')); })()""")
    page.evaluate("document.getElementById('eps').focus()")
    page.press("Home", 36)
    page.wait_for("document.getElementById('attack-result').dataset.eps === '0'")
    assert page.evaluate("document.getElementById('eps-value').textContent") == "0/255"
    source = "#attack-models article[data-model='A']"
    assert page.evaluate(f"document.querySelector(\"{source}\").dataset.changed") == "false"
    assert page.evaluate(f"document.querySelector(\"{source}\").dataset.top1") == columns[0]["top1"]
    page.press("End", 35)
    page.wait_for("document.getElementById('attack-result').dataset.eps === '64'")
    assert page.evaluate(f"document.querySelector(\"{source}\").dataset.changed") == "true"
    assert page.evaluate(f"document.querySelector(\"{source}\").dataset.top1") != columns[0]["top1"]
    assert page.evaluate(f"document.querySelector(\"{source}\").querySelector('.badge').textContent") == "fooled"
    verdict = page.evaluate("document.querySelector(\"#attack-models article[data-model='B'] .badge\").textContent")
    assert verdict in ("transfers: fooled", "does not transfer")
    page.wait_for("document.getElementById('perturbation').naturalWidth > 0")
    assert page.errors == []

    shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
    assert len(shot) > 10_000
    keep = os.environ.get("MINIPLACES_SCREENSHOT_DIR")
    if keep:
        (tmp_path / "serve.png").write_bytes(shot)
        shutil.copyfile(tmp_path / "serve.png", Path(keep) / "serve_screenshot.png")


def choose_file(page: Page, path: Path) -> None:
    """What the file dialog of the Upload… button does."""
    document = page.call("DOM.getDocument")
    node = page.call("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#upload")
    page.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node["nodeId"])


def test_upload_a_photo_or_a_bad_file(server: Server, page: Page, tmp_path: Path) -> None:
    page.call("Page.navigate", url=server.url)
    page.wait_for("document.body.dataset.ready === 'true'")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image, whatever its name says")
    choose_file(page, bad)
    message = page.wait_for("document.getElementById('status').classList.contains('error') && "
                            "document.getElementById('status').textContent")
    assert "not an image" in message

    photo = tmp_path / "photo.png"
    Image.new("RGB", (90, 60), (200, 120, 40)).save(photo)
    choose_file(page, photo)
    page.wait_for("document.querySelectorAll('#models article ol.top5 li').length === 10")
    assert page.evaluate("document.getElementById('source').value") == "upload"
    assert page.evaluate("document.getElementById('image-name').textContent") == "photo.png"
    assert page.evaluate("document.getElementById('true-label').textContent") == "no label"
    page.wait_for("document.getElementById('adversarial').naturalWidth > 0")
    assert page.errors == []
