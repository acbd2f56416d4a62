"""`miniplaces serve` against a hostile page and malformed input (issue 20): cross-site and rebound
requests, memory-hungry images, malformed requests, methods and headers, the command's own errors,
and checkpoints whose classes differ from the dataset's. Every request gets a 4xx JSON answer and
the server stays up."""

from __future__ import annotations

import io
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from PIL import Image
from serve_models import api_client

from miniplaces.cli import main
from miniplaces.data import read_categories
from miniplaces.data.synth import synthesize
from miniplaces.engine.checkpoint import describe_model, save_checkpoint
from miniplaces.engine.predict import eval_transform
from miniplaces.models import create_model

pytest.importorskip("werkzeug")

from miniplaces.serve.app import Server, build_app  # noqa: E402 (after the importorskip of the extra)
from miniplaces.serve.guard import TOKEN_HEADER, allowed_hosts  # noqa: E402
from miniplaces.serve.images import MAX_UPLOAD_STORE_BYTES, Gallery, ServeError  # noqa: E402

TORCH_THREADS = 1
SIZE = 32
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"}


def checkpoint(path: Path, categories: list[str], num_classes: int | None = None) -> Path:
    torch.manual_seed(0)
    model = create_model("simplenet", num_classes=num_classes or len(categories)).eval()
    return save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict(),
                            "categories": categories, "config": {"image_size": SIZE}}, path)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("serve_security"), classes=6, per_class=2, val_per_class=2,
                      image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def ckpt(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoint(tmp_path_factory.mktemp("serve_security_ckpt") / "model.pt", read_categories(root))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images a user points --images at: a normal one, a 200000×1 strip, a text file named .png."""
    folder = tmp_path_factory.mktemp("serve_security_folder")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a.png")
    Image.new("L", (200_000, 1)).save(folder / "b_strip.png")
    (folder / "c_broken.png").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def app(root: Path, ckpt: Path, folder: Path) -> Any:
    app = build_app([ckpt], root, folder, threads=1)
    yield app
    app.worker.close()


@pytest.fixture(scope="module")
def client(app: Any) -> Any:
    return api_client(app)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client: Any, data: bytes, name: str = "photo.png", **kwargs: Any) -> Any:
    return client.post("/api/upload", data={"image": (io.BytesIO(data), name)}, content_type="multipart/form-data",
                       **kwargs)


def still_up(client: Any) -> None:
    response = client.post("/api/predict", json={"image": "val:0"})
    assert response.status_code == 200, response.get_json()


# --- 1. cross-site requests and DNS rebinding ---------------------------------------------------------------------
def test_cross_site_requests_are_refused(app: Any, client: Any) -> None:
    plain = client.post("/api/predict", data=json.dumps({"image": "val:0"}), content_type="text/plain")
    assert plain.status_code == 415 and "application/json" in plain.get_json()["error"]
    form = client.post("/api/attack", data="image=val:0", content_type="application/x-www-form-urlencoded")
    assert form.status_code == 415
    foreign = client.post("/api/predict", json={"image": "val:0"}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "evil.example" in foreign.get_json()["error"]
    assert client.post("/api/predict", json={"image": "val:0"}, headers={"Origin": "null"}).status_code == 403
    own = client.post("/api/predict", json={"image": "val:0"}, headers={"Origin": "http://localhost"})
    assert own.status_code == 200, own.get_json()
    # Without the token (what a cross-site form or a script without the page has): refused, uploads included.
    bare = api_client(app)
    for response in (bare.post("/api/predict", json={"image": "val:0"}, headers={TOKEN_HEADER: "guess"}),
                     bare.get("/api/info", headers={TOKEN_HEADER: ""}),
                     upload(bare, png(Image.new("RGB", (8, 8))), headers={TOKEN_HEADER: "x" * len(app.token)})):
        assert response.status_code == 403 and TOKEN_HEADER in response.get_json()["error"]
    # An <img> sends no header: a GET may carry the token as a query parameter; a POST may not.
    from werkzeug.test import Client

    assert Client(app).get(f"/api/thumb/val:0?token={app.token}").status_code == 200
    assert Client(app).get("/api/thumb/val:0?token=wrong").status_code == 403
    assert Client(app).post(f"/api/predict?token={app.token}", json={"image": "val:0"}).status_code == 403
    still_up(client)


def test_a_rebound_host_gets_nothing(app: Any, client: Any) -> None:
    for path in ("/", "/api/info", "/api/images?source=folder", "/api/thumb/folder:0"):
        response = client.get(path, headers={"Host": "evil.example"})
        assert response.status_code == 403 and app.token.encode() not in response.data, path
    assert client.get("/api/thumb/folder:0", headers={"Host": "localhost"}).status_code == 200


def test_the_page_carries_the_token_and_its_script_sends_it(app: Any, root: Path, ckpt: Path) -> None:
    from werkzeug.test import Client

    page = Client(app).get("/")
    assert page.status_code == 200
    assert f'<meta name="miniplaces-token" content="{app.token}">'.encode() in page.data
    other = build_app([ckpt], root, threads=1)
    try:
        assert other.token != app.token and len(app.token) >= 32  # random per server
    finally:
        other.worker.close()
    script = Client(app).get("/static/app.js").data.decode()
    assert "X-Miniplaces-Token" in script and "?token=" in script


def test_a_served_address_answers_its_host_and_port_only(root: Path, ckpt: Path) -> None:
    with Server(build_app([ckpt], root, threads=1), "127.0.0.1", 0) as server:
        headers = {TOKEN_HEADER: server.app.token}

        def status(host: str) -> int:
            request = urllib.request.Request(server.url + "api/info", headers={**headers, "Host": host})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status
            except urllib.error.HTTPError as err:
                return err.code

        assert status(f"127.0.0.1:{server.port}") == status(f"localhost:{server.port}") == 200
        assert status("evil.example") == status(f"evil.example:{server.port}") == 403
        assert status(f"127.0.0.1:{server.port + 1}") == status("localhost") == 403


def test_a_wildcard_address_answers_this_machines_addresses_only() -> None:
    interface = next(a.address for addresses in psutil.net_if_addrs().values() for a in addresses
                     if a.family == socket.AF_INET)
    hosts = allowed_hosts("0.0.0.0", 8000)
    assert {f"{interface}:8000", "127.0.0.1:8000", "localhost:8000"} <= hosts
    assert "evil.example:8000" not in hosts and f"{interface}:8001" not in hosts
    assert allowed_hosts("192.0.2.7", 80) >= {"192.0.2.7", "192.0.2.7:80"}  # port 80: browsers omit it
    assert allowed_hosts("127.0.0.1", 8000) == {"127.0.0.1:8000", "localhost:8000", "[::1]:8000"}


# --- 2. memory --------------------------------------------------------------------------------------------------
def test_an_elongated_image_is_refused_before_decoding(client: Any, folder: Path) -> None:
    strip = png(Image.new("L", (200_000, 1)))
    assert len(strip) < 2000
    response = upload(client, strip, "strip.png")
    assert response.status_code == 413 and "200000×1" in response.get_json()["error"], response.get_json()
    assert "times longer than wide" in response.get_json()["error"]
    for request in (lambda: client.post("/api/predict", json={"image": "folder:1"}),
                    lambda: client.get("/api/thumb/folder:1")):  # the same limit for a file of --images
        response = request()
        assert response.status_code == 413 and "b_strip.png" in response.get_json()["error"]
        assert str(folder) not in response.get_json()["error"]
    still_up(client)


def test_uploads_are_kept_small_and_within_a_byte_budget(app: Any, client: Any) -> None:
    big = png(Image.new("RGB", (4000, 4000), (30, 90, 150)))
    assert len(big) < 1_000_000  # compresses small, decodes to 48 MB
    process = psutil.Process()
    before = process.memory_info().rss
    ids = []
    for i in range(40):  # bytes after IEND: another file (another id), the same pixels
        response = upload(client, big + i.to_bytes(2, "big"), f"big{i}.png")
        assert response.status_code == 200, response.get_json()
        ids.append(response.get_json()["item"]["id"])
    grown = process.memory_info().rss - before
    side = app.gallery.keep_side
    assert len(set(ids)) == 40 and app.gallery.counts()["upload"] == 32
    assert app.gallery.upload_bytes <= min(MAX_UPLOAD_STORE_BYTES, 32 * side * side * 3)
    assert grown < 768 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"  # 32 decoded copies would be 1.5 GB
    assert client.post("/api/predict", json={"image": ids[0]}).status_code == 404  # the oldest went
    assert client.post("/api/predict", json={"image": ids[-1]}).status_code == 200
    still_up(client)


def test_the_oldest_uploads_go_beyond_the_byte_budget(root: Path) -> None:
    one = 40 * 30 * 3
    gallery = Gallery(root, keep_side=30, max_bytes=3 * one)
    items = [gallery.add_upload(png(Image.new("RGB", (80, 60), (i, 0, 0))), f"{i}.png") for i in range(5)]
    assert gallery.upload_bytes == 3 * one
    assert [i.id for i in gallery.listing("upload")[0]] == [i.id for i in reversed(items[2:])]
    assert gallery.open(items[4].id)[1].size == (40, 30)  # kept at the model's side
    with pytest.raises(ServeError, match="upload it again") as gone:
        gallery.open(items[0].id)
    assert gone.value.status == 404


def test_an_upload_is_seen_as_predict_sees_the_file(app: Any, client: Any) -> None:
    image = Image.effect_noise((700, 500), 60).convert("RGB")
    item = upload(client, png(image), "noise.png").get_json()["item"]
    body = client.post("/api/predict", json={"image": item["id"]}).get_json()
    model = app.models["A"]
    with torch.inference_mode():
        expected = model.model(eval_transform(model.image_size)(image).unsqueeze(0)).softmax(1)[0]
    top = body["results"][0]["top"]
    assert [t["label"] for t in top] == expected.topk(5).indices.tolist()
    assert [t["probability"] for t in top] == pytest.approx(expected.topk(5).values.tolist(), abs=1e-6)


# --- 3. malformed requests --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("payload", "status", "words"), [
    ({"image": "val:²"}, 404, "no image"),
    ({"image": "folder:¹"}, 404, "no image"),
    ({"image": "val:-1"}, 404, "no image"),
    ({"image": "val:" + "9" * 400}, 404, "no image"),
    ({"image": 3}, 400, "image must be a string"),
    ({"image": ["val:0"]}, 400, "image must be a string"),
    ({"image": "val:0", "model": [1]}, 400, "model must be a string"),
    ({"image": "val:0", "model": {}}, 400, "model must be a string"),
    ({"image": "val:0", "method": {"a": 1}}, 400, "method must be a string"),
    ({"image": "val:0", "target": [0]}, 400, "target must be a"),
    ({"image": "val:0", "colour": "red"}, 400, "unknown field 'colour'"),
])
def test_malformed_fields_are_400_or_404(client: Any, payload: dict[str, Any], status: int, words: str) -> None:
    response = client.post("/api/saliency", json=payload)
    assert response.status_code == status and words in response.get_json()["error"], response.get_json()


def test_malformed_bodies_and_ids(client: Any) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for data in (deep, b'{"image": ' + deep + b"}", b"\xff\xfe", b"{" * 70_000):
        response = client.post("/api/predict", data=data, content_type="application/json")
        assert response.status_code in (400, 413) and "error" in response.get_json()
    attack = client.post("/api/attack", json={"image": "val:0", "eps": float("nan")})
    assert attack.status_code == 400
    for image_id in ("val:²", "folder:¹", "val:", "upload:", "nothing", "%00"):
        response = client.get(f"/api/thumb/{image_id}")
        assert response.status_code == 404 and "error" in response.get_json(), image_id
    still_up(client)


# --- 4. methods and headers -------------------------------------------------------------------------------------
def test_get_only_endpoints_refuse_other_methods(client: Any) -> None:
    for method, path in [("POST", "/api/info"), ("DELETE", "/api/thumb/val:0"), ("PUT", "/"),
                         ("POST", "/static/app.js"), ("PATCH", "/api/images"), ("OPTIONS", "/api/predict"),
                         ("GET", "/api/upload")]:
        response = client.open(path, method=method)
        assert response.status_code == 405, (method, path, response.status_code)
    assert client.head("/api/info").status_code == 200


def test_every_response_carries_the_security_headers(client: Any) -> None:
    responses = [client.get("/"), client.get("/static/app.js"), client.get("/api/info"),
                 client.get("/api/thumb/val:0"), client.get("/api/nothing"), client.get("/nothing"),
                 client.post("/api/info"), client.post("/api/predict", data="x", content_type="text/plain"),
                 client.get("/api/info", headers={"Host": "evil.example"})]
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (response.status_code, dict(response.headers))
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp


def test_errors_show_no_repr_and_no_server_path(client: Any, folder: Path, root: Path) -> None:
    messages = [upload(client, b"this is not an image at all").get_json()["error"],
                upload(client, png(Image.new("RGB", (64, 64)))[:60], "cut.png").get_json()["error"],
                client.post("/api/predict", json={"image": "folder:2"}).get_json()["error"],
                client.get("/api/thumb/folder:2").get_json()["error"]]
    (root / "images" / "val" / "00000001.jpg").rename(root / "gone.jpg")
    try:
        messages.append(client.post("/api/predict", json={"image": "val:0"}).get_json()["error"])
    finally:
        (root / "gone.jpg").rename(root / "images" / "val" / "00000001.jpg")
    assert "c_broken.png" in messages[2] and "00000001.jpg" in messages[4], messages
    for message in messages:
        assert "object at 0x" not in message and "<_io" not in message, message
        assert str(folder) not in message and str(root) not in message and "/tmp" not in message, message


def test_idle_connections_are_closed(root: Path, ckpt: Path) -> None:
    with Server(build_app([ckpt], root, threads=1), "127.0.0.1", 0, idle_timeout=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            assert sock.recv(1) == b""  # the server hung up on a client that sent nothing
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers that never end
            while sock.recv(4096):  # (a timeout here, after 30 s, fails the test)
                pass


# --- 5. the command ---------------------------------------------------------------------------------------------
def one_error_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def taken_port() -> Any:
    """A port another program listens on: a command that got past its checks fails to bind, never serves."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        yield taken.getsockname()[1]


def test_cli_errors_are_one_line(root: Path, ckpt: Path, taken_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["serve", "--checkpoint", str(ckpt), "--root", str(root), "--port", str(taken_port)]
    assert main(base) == 2
    one_error_line(capsys, f"127.0.0.1:{taken_port}", "--port")
    assert main([*base, "--host", "no-such-host.invalid"]) == 2
    one_error_line(capsys, "no-such-host.invalid", "does not resolve")
    assert main([*base, "--host", "0.0.0.0"]) == 2
    one_error_line(capsys, "0.0.0.0", "--allow-remote")
    assert main([*base, "--device", "tpu"]) == 2
    one_error_line(capsys, "--device", "tpu")
    if not torch.cuda.is_available():
        assert main([*base, "--device", "cuda"]) == 2
        one_error_line(capsys, "--device", "cuda")


# --- 6. class names ---------------------------------------------------------------------------------------------
def test_a_checkpoint_of_other_classes_is_refused(root: Path, tmp_path: Path, taken_port: int,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ten = checkpoint(tmp_path / "ten.pt", [f"scene_{i:03d}" for i in range(10)])
    assert main(["serve", "--checkpoint", str(ten), "--root", str(root), "--port", str(taken_port)]) == 2
    one_error_line(capsys, "ten.pt", "predicts 10 classes", "6")
    names = read_categories(root)
    renamed = checkpoint(tmp_path / "renamed.pt", [*names[:3], "palace", *names[4:]])
    assert main(["serve", "--checkpoint", str(renamed), "--root", str(root), "--port", str(taken_port)]) == 2
    one_error_line(capsys, "renamed.pt", "class 3", "'palace'")
