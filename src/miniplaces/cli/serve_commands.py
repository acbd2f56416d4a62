"""`miniplaces serve`: explore trained models in the browser (a local web page)."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import time
from pathlib import Path

from miniplaces.cli.command import add_command, port, positive_int
from miniplaces.engine.device import resolve_device
from miniplaces.errors import MiniPlacesError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "serve", run)
    parser.add_argument("--checkpoint", type=Path, nargs="+", required=True, metavar="CKPT",
                        help="one or two (or more) checkpoints written by `miniplaces train`, run folders "
                        "(their checkpoints/best.pt) or export folders")
    parser.add_argument("--root", type=Path, help="a dataset folder whose val split the page browses")
    parser.add_argument("--images", type=Path, help="also browse the images under this folder")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; others need --allow-remote)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host that other machines can reach (the page has no login)")
    parser.add_argument("--port", type=port, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads for the inference worker")
    parser.add_argument("--device", default="cpu", help="torch device of the models: cpu (default), cuda, mps, auto")


def _check_host(host: str, allow_remote: bool) -> None:
    """Refuse a host that does not resolve, or that other machines could reach unless the user says so."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise MiniPlacesError(f"--host {host!r} does not resolve ({reason}); "
                              "give an address such as 127.0.0.1") from None
    addresses = {info[4][0].split("%")[0] for info in infos}
    if not allow_remote and not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise MiniPlacesError(f"--host {host} ({', '.join(sorted(addresses))}) lets other machines reach the page, "
                              "which has no login; add --allow-remote if that is meant, or use 127.0.0.1")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.root is None and args.images is None:
        raise MiniPlacesError("give --root DIR (a dataset whose val split to browse) or --images DIR, or both")
    if args.root is not None and not (args.root / "val.txt").is_file():
        raise MiniPlacesError(f"{args.root} has no val.txt; --root takes a MiniPlaces dataset folder")
    if args.images is not None and not args.images.is_dir():
        raise MiniPlacesError(f"{args.images} is not a folder; --images takes a folder of images")
    _check_host(args.host, args.allow_remote)
    device = resolve_device(args.device, source="--device")
    try:
        from miniplaces.serve.app import Server, build_app
    except ModuleNotFoundError as err:
        raise MiniPlacesError(f"serve needs the serve extra ({err.name} is missing): "
                              "pip install 'miniplaces[serve]'") from err
    app = build_app(args.checkpoint, args.root, args.images, threads=args.threads, device=device)
    try:
        server = Server(app, args.host, args.port)
    except OSError as err:
        app.worker.close()
        raise MiniPlacesError(f"cannot listen on {args.host}:{args.port} ({err.strerror}); "
                              "choose another --port, or 0 for a free one") from err
    names = ", ".join(f"{m.key}: {m.name} ({m.checkpoint})" for m in app.models.values())
    print(f"serving {names}")
    if args.allow_remote:
        print(f"warning: listening on {args.host}, so other machines may reach the page; it has no login")
    print(f"open {server.url}  (started in {time.perf_counter() - start:.1f} s; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.close()
    return 0
