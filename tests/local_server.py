"""A local HTTP file server for download tests: Range support, a request log, bounded to 127.0.0.1."""

from __future__ import annotations

import io
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer:
    """A local HTTP server over a dict of path → bytes, with Range support and a request log.

    `etags` (path → tag) adds an ETag header and honours If-Range: a range request whose
    If-Range names another tag gets the whole file (200), as HTTP says. `cut_after` makes
    the next response stop after that many body bytes (then it is reset).
    """

    def __init__(self, files: dict[str, bytes], honour_range: bool = True,
                 etags: dict[str, str] | None = None, cut_after: int | None = None) -> None:
        self.files = files
        self.honour_range = honour_range
        self.etags = etags or {}
        self.cut_after = cut_after
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.if_range: list[str | None] = []  # the If-Range header of each request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append((self.path, self.headers.get("Range")))
                server.if_range.append(self.headers.get("If-Range"))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                wanted = self.headers.get("Range")
                etag = server.etags.get(self.path)
                if wanted and self.headers.get("If-Range") not in (None, etag):
                    wanted = None  # the file changed since the client's copy: send it whole
                if wanted and server.honour_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                if etag is not None:
                    self.send_header("ETag", etag)
                self.end_headers()
                cut, server.cut_after = server.cut_after, None
                self.wfile.write(body[start:] if cut is None else body[start : start + cut])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def make_archive(root: Path, prefix: str = "", with_labels: bool = False) -> bytes:
    """A tar.gz of root's images/ (and label files) under `prefix`, like the official data.tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(root / "images", arcname=f"{prefix}images")
        tar.add(root / "categories.txt", arcname=f"{prefix}objects/not_labels.txt")
        if with_labels:
            for name in ("train.txt", "val.txt", "categories.txt"):
                tar.add(root / name, arcname=f"{prefix}{name}")
    return buffer.getvalue()


def label_files(root: Path, base: str = "/mirror/") -> dict[str, bytes]:
    return {f"{base}{name}": (root / name).read_bytes() for name in ("train.txt", "val.txt", "categories.txt")}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
