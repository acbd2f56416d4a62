"""`miniplaces serve` API: top-5, saliency, attacks and transfer, bad uploads and requests, the server's life."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from serve_models import TINY_VIT, api_client, train_checkpoint

from miniplaces.cli import main
from miniplaces.data.synth import synthesize
from miniplaces.engine.checkpoint import describe_model, load_model, save_checkpoint
from miniplaces.engine.predict import eval_transform
from miniplaces.errors import MiniPlacesError
from miniplaces.models import create_model

pytest.importorskip("werkzeug")

from miniplaces.serve.app import Server, build_app  # noqa: E402 (after the importorskip of the extra)
from miniplaces.serve.guard import TOKEN_HEADER  # noqa: E402
from miniplaces.serve.images import MAX_UPLOAD_BYTES, ServeError  # noqa: E402
from miniplaces.serve.worker import InferenceWorker  # noqa: E402

TORCH_THREADS = 1
SIZE = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 classes, so that a top-5 has five entries."""
    return synthesize(tmp_path_factory.mktemp("serve_synth"), classes=6, per_class=12, val_per_class=2,
                      image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def checkpoints(root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serve_checkpoints")
    return {"simplenet": train_checkpoint(root, folder / "simplenet.pt", steps=25, image_size=SIZE),
            "vit": train_checkpoint(root, folder / "vit.pt", "vit", steps=40, image_size=SIZE, **TINY_VIT)}


@pytest.fixture(scope="module")
def client(root: Path, checkpoints: dict[str, Path]) -> Any:
    app = build_app([checkpoints["simplenet"], checkpoints["vit"]], root, threads=1)
    yield api_client(app)
    app.worker.close()


def post(client: Any, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = client.post(path, data=json.dumps(payload), content_type="application/json")
    return response.status_code, response.get_json()


def decode_png(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])))


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_info_and_gallery(client: Any) -> None:
    info = client.get("/api/info").get_json()
    assert [(m["key"], m["name"]) for m in info["models"]] == [("A", "simplenet"), ("B", "vit")]
    assert info["models"][0]["methods"] == ["vanilla", "smoothgrad", "gradcam"]
    assert info["models"][1]["methods"] == ["vanilla", "smoothgrad"]  # a ViT has no Grad-CAM layer
    assert info["sources"] == {"val": 12, "folder": 0, "upload": 0}
    page = client.get("/api/images?source=val&offset=10&limit=5").get_json()
    assert page["total"] == 12 and [item["id"] for item in page["items"]] == ["val:10", "val:11"]
    assert page["items"][0]["label_name"] == info["categories"][page["items"][0]["label"]]
    thumb = client.get("/api/thumb/val:3")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.data)).size == (SIZE, SIZE)
    page = client.get("/")
    assert page.status_code == 200 and b"/static/app.js" in page.data
    for name in ("index.html", "app.js", "style.css"):  # nothing fetched from elsewhere: the page works offline
        assert b"http" not in client.get(f"/static/{name}").data and b"url(" not in client.get(f"/static/{name}").data


def test_predict_gives_each_models_top5(client: Any, root: Path, checkpoints: dict[str, Path]) -> None:
    status, body = post(client, "/api/predict", {"image": "val:0"})
    assert status == 200, body
    assert [r["model"] for r in body["results"]] == ["A", "B"]
    model, _ = load_model(checkpoints["simplenet"])
    x = eval_transform(SIZE)(Image.open(root / "images" / "val" / "00000001.jpg").convert("RGB")).unsqueeze(0)
    expected = model(x).softmax(1)[0].detach()
    for result in body["results"]:
        probs = [t["probability"] for t in result["top"]]
        assert len(probs) == 5 == len({t["label"] for t in result["top"]})
        assert probs == sorted(probs, reverse=True) and 0.5 < sum(probs) <= 1 + 1e-6
        assert decode_png(result["input"]).size == (SIZE, SIZE)
    top = body["results"][0]["top"]
    assert [t["label"] for t in top] == expected.topk(5).indices.tolist()
    assert [t["probability"] for t in top] == pytest.approx(expected.topk(5).values.tolist(), abs=1e-5)
    assert body["image"]["label"] is not None and top[0]["label"] == body["image"]["label"]  # a trained model


@pytest.mark.parametrize("method", ["vanilla", "smoothgrad", "gradcam"])
def test_saliency_map_of_the_chosen_class(client: Any, method: str) -> None:
    maps = {}
    for target in (1, 4):
        status, body = post(client, "/api/saliency", {"image": "val:2", "model": "A", "method": method,
                                                      "target": target})
        assert status == 200, body
        assert body["target"] == target and body["method"] == method
        maps[target] = decode_png(body["heat"]).convert("L")
        assert decode_png(body["overlay"]).size == (SIZE, SIZE)
        assert maps[target].getextrema()[1] > 200  # scaled to fill the range
    assert maps[1].tobytes() != maps[4].tobytes()  # the class to explain changes the map
    status, body = post(client, "/api/saliency", {"image": "val:2", "model": "A", "method": method})
    predicted = post(client, "/api/predict", {"image": "val:2"})[1]["results"][0]["top"][0]["label"]
    assert status == 200 and body["target"] == predicted  # by default, the predicted class


def right_for_model_a(client: Any) -> str:
    """A val image that model A classifies right: an untargeted attack moves away from the true class,
    so on a misclassified image it need not change the prediction."""
    for index in range(12):
        body = post(client, "/api/predict", {"image": f"val:{index}"})[1]
        if body["results"][0]["top"][0]["label"] == body["image"]["label"]:
            return f"val:{index}"
    raise AssertionError("model A classifies no val image right")


def test_attack_changes_the_prediction_at_large_eps_and_reports_transfer(client: Any) -> None:
    image = right_for_model_a(client)
    status, body = post(client, "/api/attack", {"image": image, "model": "A", "attack": "pgd-untargeted",
                                                "eps": 0, "steps": 10})
    assert status == 200, body
    assert [r["changed"] for r in body["results"]] == [False, False] and body["linf"] == 0
    for attack in ("pgd-untargeted", "pgd-least-likely", "fgsm"):
        status, body = post(client, "/api/attack", {"image": image, "model": "A", "attack": attack,
                                                    "eps": 48, "steps": 10})
        assert status == 200, body
        source, other = body["results"]
        assert (source["model"], source["source"], other["model"], other["source"]) == ("A", True, "B", False)
        clean_top = source["clean"][0]
        after = {entry["label"]: entry["probability"] for entry in source["adversarial"]}
        # Every attack lowers the confidence in the clean prediction; untargeted PGD at 48/255 overturns it
        # (FGSM's one step and the least-likely target need not, on a tiny model).
        assert after.get(clean_top["label"], 0.0) < clean_top["probability"], (attack, source)
        if attack == "pgd-untargeted":
            assert source["changed"] and source["adversarial"][0]["label"] != clean_top["label"], source
        assert other["clean"][0]["label"] == post(client, "/api/predict", {"image": image})[1]["results"][1][
            "top"][0]["label"]
        assert 0 < body["linf"] <= 48 + 1e-3
        assert decode_png(body["adversarial"]).size == decode_png(body["perturbation"]).size == (SIZE, SIZE)


def test_attack_on_a_vit_is_tested_on_the_cnn(client: Any) -> None:
    status, body = post(client, "/api/attack", {"image": "val:1", "model": "B", "attack": "pgd-least-likely",
                                                "eps": 64})
    assert status == 200, body
    assert [(r["model"], r["source"]) for r in body["results"]] == [("A", False), ("B", True)]  # in model order
    assert body["results"][1]["changed"]


def upload(client: Any, data: bytes, name: str = "photo.png") -> Any:
    return client.post("/api/upload", data={"image": (io.BytesIO(data), name)}, content_type="multipart/form-data")


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "I;16"])
def test_uploads_of_any_mode_are_converted(client: Any, root: Path, mode: str) -> None:
    image = Image.open(root / "images" / "val" / "00000004.jpg").convert("RGB").resize((45, 37))
    image = image.convert(mode) if mode != "I;16" else image.convert("L").convert("I;16")
    response = upload(client, png_bytes(image, "JPEG" if mode == "CMYK" else "PNG"), f"odd-{mode}.png")
    assert response.status_code == 200, response.get_json()
    item = response.get_json()["item"]
    assert item["id"].startswith("upload:") and item["label"] is None
    status, body = post(client, "/api/predict", {"image": item["id"]})
    assert status == 200 and len(body["results"][0]["top"]) == 5
    status, body = post(client, "/api/attack", {"image": item["id"], "attack": "pgd-untargeted", "eps": 8})
    assert status == 200, body  # untargeted without a label: away from the predicted class
    assert item["id"] in [i["id"] for i in client.get("/api/images?source=upload").get_json()["items"]]


def test_uploads_are_multipart_only(client: Any, root: Path) -> None:
    """A raw body is refused: text/plain and form-urlencoded are what a cross-site form can send."""
    data = (root / "images" / "val" / "00000003.jpg").read_bytes()
    for content_type in ("image/jpeg", "application/x-www-form-urlencoded", "text/plain"):
        response = client.post("/api/upload", data=data, content_type=content_type)
        assert response.status_code == 415 and "multipart/form-data" in response.get_json()["error"]
    assert upload(client, data, "../../etc/raw.jpg").get_json()["item"]["name"] == "raw.jpg"


def test_bad_uploads_are_refused_with_a_message(client: Any) -> None:
    cases = [
        (b"this is not an image at all", 415, "not an image"),
        (b"", 400, "empty"),
        (png_bytes(Image.new("L", (8000, 6000))), 413, "megapixels"),
        (b"\x00" * (MAX_UPLOAD_BYTES + 1), 413, "MB"),
    ]
    for data, status, words in cases:
        response = upload(client, data)
        body = response.get_json()
        assert response.status_code == status and words in body["error"], (status, body)
    big = upload(client, b"\x00" * (MAX_UPLOAD_BYTES + 100_000))
    assert big.status_code == 413 and "MB" in big.get_json()["error"]
    wrong_field = client.post("/api/upload", data={"file": (io.BytesIO(b"x"), "x.png")},
                              content_type="multipart/form-data")
    assert wrong_field.status_code == 400 and "'image'" in wrong_field.get_json()["error"]


@pytest.mark.parametrize(("path", "payload", "status", "words"), [
    ("/api/predict", {"image": "val:99"}, 404, "no image"),
    ("/api/predict", {"image": "upload:0123"}, 404, "upload it again"),
    ("/api/saliency", {"image": "val:0", "model": "C"}, 404, "no model"),
    ("/api/saliency", {"image": "val:0", "method": "occlusion"}, 400, "unknown saliency method"),
    ("/api/saliency", {"image": "val:0", "model": "B", "method": "gradcam"}, 400, "Grad-CAM"),
    ("/api/saliency", {"image": "val:0", "target": 6}, 400, "target must lie in 0..5"),
    ("/api/saliency", {"image": "val:0", "target": 1.5}, 400, "whole number"),
    ("/api/attack", {"image": "val:0", "eps": 300}, 400, "1/255 units"),
    ("/api/attack", {"image": "val:0", "eps": "8"}, 400, "eps must be a number"),
    ("/api/attack", {"image": "val:0", "attack": "cw"}, 400, "unknown attack"),
    ("/api/attack", {"image": "val:0", "steps": 0}, 400, "steps must lie in 1..100"),
])
def test_bad_requests_get_a_json_error(client: Any, path: str, payload: dict[str, Any], status: int,
                                       words: str) -> None:
    got, body = post(client, path, payload)
    assert got == status and words in body["error"], body


def test_malformed_requests(client: Any) -> None:
    response = client.post("/api/predict", data=b"{not json", content_type="application/json")
    assert response.status_code == 400 and "not JSON" in response.get_json()["error"]
    response = client.post("/api/predict", data=b"[1, 2]", content_type="application/json")
    assert response.status_code == 400 and "JSON object" in response.get_json()["error"]
    response = client.get("/api/predict")
    assert response.status_code == 405 and "error" in response.get_json()
    assert client.get("/api/nothing").status_code == 404 and "error" in client.get("/api/nothing").get_json()
    assert client.get("/static/secret.py").status_code == 404


def test_worker_runs_jobs_on_one_thread_and_refuses_when_full() -> None:
    worker = InferenceWorker(max_pending=1)
    started, release = threading.Event(), threading.Event()

    def block() -> bool:
        started.set()
        return release.wait(timeout=30)

    try:
        names = [worker.run(lambda: threading.current_thread().name) for _ in range(3)]
        assert set(names) == {"miniplaces-serve-worker"} and threading.current_thread().name not in names
        running = worker.submit(block)
        assert started.wait(timeout=30)  # the worker is busy
        queued = worker.submit(lambda: 1)  # fills the one-job queue
        with pytest.raises(ServeError) as refused:
            worker.submit(lambda: 2)
        assert refused.value.status == 503 and "busy" in str(refused.value)
        release.set()
        assert running.result(timeout=10) is True and queued.result(timeout=10) == 1
        with pytest.raises(ZeroDivisionError):
            worker.run(lambda: 1 / 0)  # an error reaches the caller; the worker goes on
        assert worker.run(lambda: 3) == 3
    finally:
        release.set()
        worker.close()


def test_server_on_a_free_port_stops_by_itself(root: Path, checkpoints: dict[str, Path]) -> None:
    app = build_app([checkpoints["simplenet"]], root, threads=1)
    with Server(app, "127.0.0.1", 0) as server:
        assert server.port > 0 and server.url.startswith("http://127.0.0.1:")
        request = urllib.request.Request(server.url + "api/info", headers={TOKEN_HEADER: app.token})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert [m["name"] for m in json.load(response)["models"]] == ["simplenet"]
        request = urllib.request.Request(server.url + "api/saliency", data=b'{"image": "val:0", "method": "x"}',
                                         headers={"Content-Type": "application/json", TOKEN_HEADER: app.token})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 400 and "unknown saliency method" in json.load(refused.value)["error"]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url + "api/info", timeout=5)


def test_folder_source(tmp_path: Path, root: Path, checkpoints: dict[str, Path]) -> None:
    (tmp_path / "pics" / "sub").mkdir(parents=True)
    Image.open(root / "images" / "val" / "00000001.jpg").save(tmp_path / "pics" / "sub" / "b.png")
    Image.open(root / "images" / "val" / "00000002.jpg").save(tmp_path / "pics" / "a.jpg")
    app = build_app([checkpoints["simplenet"]], None, tmp_path / "pics", threads=1)
    try:
        client = api_client(app)
        page = client.get("/api/images?source=folder").get_json()
        assert [(i["id"], i["name"], i["label"]) for i in page["items"]] == [("folder:0", "a.jpg", None),
                                                                             ("folder:1", "sub/b.png", None)]
        status, body = post(client, "/api/predict", {"image": "folder:1"})
        assert status == 200 and body["results"][0]["top"][0]["name"] == app.categories[
            body["results"][0]["top"][0]["label"]]
    finally:
        app.worker.close()


def test_cli_refuses_bad_arguments(tmp_path: Path, checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                   root: Path) -> None:
    assert main(["serve", "--checkpoint", str(checkpoints["simplenet"])]) == 2
    assert "--root" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(checkpoints["simplenet"]), "--root", str(tmp_path)]) == 2
    assert "no val.txt" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(tmp_path / "none.pt"), "--root", str(root)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_models_of_different_classes_are_not_served_together(tmp_path: Path, root: Path,
                                                             checkpoints: dict[str, Path]) -> None:
    model = create_model("simplenet", num_classes=3)
    three = save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict(), "categories": []},
                            tmp_path / "three.pt")
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "pics" / "a.png")
    with pytest.raises(MiniPlacesError, match=r"different numbers of classes: .*simplenet.pt \(6\), .*three.pt \(3\)"):
        build_app([checkpoints["simplenet"], three], folder=tmp_path / "pics")


def test_models_are_named_by_their_run(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from miniplaces.serve.model_service import load_served_model

    best = tmp_path / "fast_run" / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(checkpoints["simplenet"].read_bytes())
    (best.parent / "last.pt").write_bytes(best.read_bytes())
    assert load_served_model(best, "A").describe()["checkpoint"] == "fast_run"
    assert load_served_model(best.parent / "last.pt", "B").describe()["checkpoint"] == "fast_run (last.pt)"
    assert load_served_model(best.parent.parent, "C").describe()["checkpoint"] == "fast_run"  # a run folder
