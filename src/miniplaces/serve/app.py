"""The WSGI application behind `miniplaces serve` (Werkzeug), and a server to run it.

Endpoints (JSON in, JSON out; every error is `{"error": message}` with a 4xx/5xx status). Every
API call carries the server's token, and comes from the server's own address (see `guard`):

```
GET  /                          the page (static/index.html, app.js, style.css: no external assets)
GET  /api/info                  models, class names, image sources, saliency methods, attacks
GET  /api/images?source=val&offset=0&limit=60    a page of the gallery
GET  /api/thumb/<id>            a JPEG thumbnail
POST /api/upload                an image file (multipart field `image`) → its gallery item
POST /api/predict    {image}                               per model: the input crop and its top-5
POST /api/saliency   {image, model, method, target?}       the map over the image, the explained class
POST /api/attack     {image, model, attack, eps, steps}    adversarial image, perturbation, top-5 of every model
```
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from werkzeug.exceptions import HTTPException, NotFound, RequestEntityTooLarge
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from miniplaces.errors import MiniPlacesError
from miniplaces.serve import guard
from miniplaces.serve import model_service as ms
from miniplaces.serve.images import MAX_UPLOAD_BYTES, SOURCES, Gallery, GalleryItem, ServeError, png_data_url
from miniplaces.serve.worker import InferenceWorker

MAX_EPS_255 = 64
MAX_STEPS = 100
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
# A JSON body is a few hundred bytes; an upload may carry the whole 10 MB image plus multipart framing.
MAX_REQUEST_BYTES = MAX_UPLOAD_BYTES + 64 * 1024
# A connection that sends nothing for this long is closed, so idle or half-open sockets do not hold threads.
IDLE_TIMEOUT_S = 30.0
TOKEN_PLACEHOLDER = b"__MINIPLACES_TOKEN__"
_SERVER_PATH = re.compile(r"(?<![\w.:])/(?:[^/\s'\"]+/)+")  # an absolute path's folders: the user sees the name

logger = logging.getLogger(__name__)


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json",
                    headers={"Cache-Control": "no-store"})


def _error(err: MiniPlacesError, status: int) -> Response:
    """A refusal as JSON, without the folders of any server path it names."""
    return _json({"error": _SERVER_PATH.sub("", str(err))}, status)


def _int(value: Any, name: str, low: int, high: int, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str) or (
            isinstance(value, float) and not value.is_integer()):
        raise ServeError(f"{name} must be a whole number in {low}..{high}; got {value!r}")
    try:
        number = int(value)
    except (ValueError, OverflowError):
        raise ServeError(f"{name} must be a whole number in {low}..{high}; got {value!r}") from None
    if not low <= number <= high:
        raise ServeError(f"{name} must lie in {low}..{high}; got {number}")
    return number


class ServeApp:
    """The WSGI app: holds the models (used only on the worker thread) and the gallery.

    `token` (random by default) is embedded in the page and required on every API call; `hosts`
    are the `Host` values answered: the loopback names on port 80 until a `Server` binds the app.
    """

    def __init__(self, models: Sequence[ms.ServedModel], gallery: Gallery, worker: InferenceWorker,
                 token: str | None = None) -> None:
        if not models:
            raise MiniPlacesError("serve needs at least one checkpoint")
        sizes = {len(m.categories) for m in models}
        if len(sizes) > 1:  # side by side, and transfer, only mean something over the same classes
            listing = ", ".join(f"{m.checkpoint} ({len(m.categories)})" for m in models)
            raise MiniPlacesError(f"the checkpoints classify different numbers of classes: {listing}; "
                                  "serve models trained on the same dataset together")
        self.models = {m.key: m for m in models}
        self.gallery = gallery
        self.worker = worker
        self.token = token or secrets.token_urlsafe(24)
        self.hosts = guard.allowed_hosts("127.0.0.1", 80)
        self.url_map = Map([
            Rule("/", endpoint="page", methods=["GET"]),
            Rule("/static/<name>", endpoint="static", methods=["GET"]),
            Rule("/api/info", endpoint="info", methods=["GET"]),
            Rule("/api/images", endpoint="images", methods=["GET"]),
            Rule("/api/thumb/<path:image_id>", endpoint="thumb", methods=["GET"]),
            Rule("/api/upload", endpoint="upload", methods=["POST"]),
            Rule("/api/predict", endpoint="predict", methods=["POST"]),
            Rule("/api/saliency", endpoint="saliency", methods=["POST"]),
            Rule("/api/attack", endpoint="attack", methods=["POST"]),
        ])

    @property
    def categories(self) -> list[str]:
        """The dataset's class names, else the first model's."""
        return self.gallery.categories or next(iter(self.models.values())).categories

    # --- plumbing ---------------------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        request.max_content_length = MAX_REQUEST_BYTES
        return self.dispatch(request)(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        return guard.secure(self._answer(request))

    def _answer(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
            guard.check_request(request, endpoint, self.hosts, self.token)
            return getattr(self, f"on_{endpoint}")(request, **values)
        except ServeError as err:
            return _error(err, err.status)
        except MiniPlacesError as err:  # a library refusal (bad ε, unknown method…): the user's input
            return _error(err, 400)
        except RequestEntityTooLarge:
            return _json({"error": f"the request is larger than {MAX_UPLOAD_BYTES // 2**20} MB; "
                                   "upload a smaller image"}, 413)
        except HTTPException as err:
            if request.path.startswith("/api/") or err.code != 404:
                return _json({"error": f"{err.name}: {request.method} {request.path}"}, err.code or 500)
            return err.get_response()
        except TimeoutError:
            return _json({"error": "the model took too long to answer"}, 504)
        except Exception:  # a bug: the details go to the server's log, not to whoever asked
            logger.exception("%s %s failed", request.method, request.path)
            return _json({"error": "internal error; the server's log has the details"}, 500)

    def _model(self, key: str | None) -> ms.ServedModel:
        if key is None:
            return next(iter(self.models.values()))
        if key not in self.models:
            raise ServeError(f"no model {key[:40]!r}; the server holds {', '.join(self.models)}", 404)
        return self.models[key]

    # --- static -----------------------------------------------------------------------------------------------
    def on_page(self, request: Request) -> Response:
        return self.on_static(request, "index.html")

    def on_static(self, request: Request, name: str) -> Response:
        if name not in STATIC_FILES:
            raise NotFound()
        body = resources.files("miniplaces.serve").joinpath("static", name).read_bytes()
        if name == "index.html":  # only a page loaded from this server can read the token
            body = body.replace(TOKEN_PLACEHOLDER, self.token.encode())
        return Response(body, mimetype=STATIC_FILES[name], headers={"Cache-Control": "no-store"})

    # --- gallery ----------------------------------------------------------------------------------------------
    def on_info(self, request: Request) -> Response:
        return _json({
            "models": [m.describe() for m in self.models.values()],
            "categories": self.categories,
            "sources": self.gallery.counts(),
            "methods": list(ms.SALIENCY_METHODS),
            "attacks": list(ms.ATTACKS),
            "max_eps": MAX_EPS_255,
            "max_upload_bytes": MAX_UPLOAD_BYTES,
        })

    def on_images(self, request: Request) -> Response:
        source = request.args.get("source", "val")
        if source not in SOURCES:
            raise ServeError(f"unknown image source {source!r}; choose one of {', '.join(SOURCES)}")
        offset = _int(request.args.get("offset"), "offset", 0, 10**9, 0)
        limit = _int(request.args.get("limit"), "limit", 1, 500, 60)
        items, total = self.gallery.listing(source, offset, limit)
        return _json({"source": source, "total": total, "offset": offset,
                      "items": [item.describe(self.categories) for item in items]})

    def on_thumb(self, request: Request, image_id: str) -> Response:
        return Response(self.gallery.thumbnail(image_id), mimetype="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    def on_upload(self, request: Request) -> Response:
        upload = request.files.get("image")  # the guard lets only multipart bodies through
        if upload is None:
            raise ServeError("send the image as the multipart field 'image'")
        item = self.gallery.add_upload(upload.read(), upload.filename or "upload")
        return _json({"item": item.describe(self.categories)})

    # --- model work (on the worker thread) --------------------------------------------------------------------
    def on_predict(self, request: Request) -> Response:
        body = guard.fields(guard.json_object(request), {"image": (str,)})
        item, image = self.gallery.open(body["image"] or "")
        return _json(self.worker.run(self._predict, item, image))

    def _predict(self, item: GalleryItem, image: Image.Image) -> dict[str, Any]:
        results = []
        for served in self.models.values():
            x = ms.to_input(image, served)
            results.append({"model": served.key, "input": png_data_url(x[0]), "top": ms.top_k(served, x)})
        return {"image": item.describe(self.categories), "results": results}

    def on_saliency(self, request: Request) -> Response:
        body = guard.fields(guard.json_object(request), {"image": (str,), "model": (str,), "method": (str,),
                                                         "target": (int, float, str)})
        served = self._model(body["model"])
        method = body["method"] or "vanilla"
        if method not in ms.SALIENCY_METHODS:
            raise ServeError(f"unknown saliency method {method[:40]!r}; "
                             f"choose one of {', '.join(ms.SALIENCY_METHODS)}")
        target = body["target"]
        target = None if target in (None, "") else _int(target, "target", 0, len(served.categories) - 1)
        _, image = self.gallery.open(body["image"] or "")
        return _json(self.worker.run(self._saliency, served, image, method, target))

    def _saliency(self, served: ms.ServedModel, image: Image.Image, method: str,
                  target: int | None) -> dict[str, Any]:
        start = time.perf_counter()
        x = ms.to_input(image, served)
        heat, target = ms.saliency_heat(served, x, method, target)
        return {"model": served.key, "method": method, "target": target, "target_name": served.categories[target],
                "overlay": png_data_url(ms.overlay(x, heat)), "heat": png_data_url(heat.expand(3, -1, -1)),
                "seconds": time.perf_counter() - start}

    def on_attack(self, request: Request) -> Response:
        body = guard.fields(guard.json_object(request), {"image": (str,), "model": (str,), "attack": (str,),
                                                         "eps": (int, float), "steps": (int, float)})
        served = self._model(body["model"])
        attack = body["attack"] or "pgd-least-likely"
        if attack not in ms.ATTACKS:
            raise ServeError(f"unknown attack {attack[:40]!r}; choose one of {', '.join(ms.ATTACKS)}")
        eps_255 = 6 if body["eps"] is None else body["eps"]
        if not 0 <= eps_255 <= MAX_EPS_255:  # NaN fails this too
            raise ServeError(f"eps is in 1/255 units and must be a number in 0..{MAX_EPS_255}; got {eps_255!r}")
        steps = _int(body["steps"], "steps", 1, MAX_STEPS, 10)
        item, image = self.gallery.open(body["image"] or "")
        eps = ms.parse_eps(f"{eps_255}/255")
        return _json(self.worker.run(self._attack, served, item.label, image, attack, eps, steps))

    def _attack(self, served: ms.ServedModel, label: int | None, image: Image.Image, attack: str, eps: float,
                steps: int) -> dict[str, Any]:
        start = time.perf_counter()
        x = ms.to_input(image, served)
        adversarial = ms.attack_image(served, x, attack, eps, steps, label)
        seconds = time.perf_counter() - start
        delta = adversarial - x
        amplitude = float(delta.abs().max())
        shown = 0.5 + delta / (2 * amplitude) if amplitude > 0 else torch.full_like(delta, 0.5)
        results = []
        for other in self.models.values():
            clean = ms.top_k(other, ms.to_input(image, other) if other is not served else x)
            adv = ms.top_k(other, ms.fit_to(adversarial, other))
            results.append({"model": other.key, "source": other is served, "clean": clean, "adversarial": adv,
                            "changed": clean[0]["label"] != adv[0]["label"]})
        return {"model": served.key, "attack": attack, "eps": round(eps * 255, 6), "steps": steps,
                "adversarial": png_data_url(adversarial[0]), "perturbation": png_data_url(shown[0]),
                "amplification": 0.5 / amplitude if amplitude > 0 else 0.0, "linf": amplitude * 255,
                "results": results, "seconds": seconds}


def build_app(checkpoints: Sequence[Path | str], root: Path | str | None = None,
              folder: Path | str | None = None, *, threads: int | None = None,
              device: str | torch.device = "cpu", token: str | None = None) -> ServeApp:
    """Load the checkpoints (keys A, B, …) and the gallery; start the inference worker.

    Raises `MiniPlacesError` when a checkpoint's classes differ from those of the dataset at `root`.
    """
    gallery = Gallery(root, folder)
    models = [ms.load_served_model(path, chr(ord("A") + i), gallery.categories, device=device)
              for i, path in enumerate(checkpoints)]
    gallery.keep_side = max(ms.input_side(m) for m in models) if models else gallery.keep_side
    worker = InferenceWorker(threads=threads)
    try:
        app = ServeApp(models, gallery, worker, token)
    except MiniPlacesError:
        worker.close()
        raise
    worker.submit(ms.warm_up, models)  # runs while the server starts listening
    return app


class Server:
    """`app` served on host:port from a background thread (port 0: a free one); `close()` stops it.

    Raises `OSError` when the address cannot be bound (`socket.gaierror` when `host` does not
    resolve). A connection idle for `idle_timeout` seconds is closed.
    """

    def __init__(self, app: ServeApp, host: str = "127.0.0.1", port: int = 0, *,
                 idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        self.app = app
        # Werkzeug logs every request (thumbnails included) at INFO; warnings and errors are enough here.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        # Bound here, not by Werkzeug, which prints its own text and exits when the port is taken.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            handler = type("IdleTimeoutHandler", (WSGIRequestHandler,), {"timeout": idle_timeout})
            self._server: BaseWSGIServer = make_server(host, port, app, threaded=True, request_handler=handler,
                                                       fd=sock.fileno())
        self.host, self.port = host, self._server.port
        app.hosts = guard.allowed_hosts(host, self.port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="miniplaces-serve-http",
                                        daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> Server:
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on the calling thread until interrupted."""
        self._server.serve_forever()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        self.app.worker.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
