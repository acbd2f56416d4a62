"""What every request must show before the app looks at it, and what every response carries.

The server listens on this machine, but any web page the user opens can send it requests: a
cross-site form or `fetch`, or a page whose host name is rebound to 127.0.0.1 (DNS rebinding).
So a request is answered only when

- its `Host` is the address served (the loopback names, or the host given, with the port): a
  rebound name is refused;
- its `Origin`, when present, is that address too: a foreign page is refused;
- an API call carries the server's token (a random value embedded in the page, which only a page
  loaded from this server can read), in the `X-Miniplaces-Token` header, or for a GET (an
  `<img>` has no headers) the `token` query parameter;
- a POST body is `application/json` (multipart for an upload), types a cross-site form cannot send.
"""

from __future__ import annotations

import hmac
import json
import socket
from typing import Any

import psutil
from werkzeug.wrappers import Request, Response

from miniplaces.serve.images import ServeError

TOKEN_HEADER = "X-Miniplaces-Token"
TOKEN_PARAM = "token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARDS = ("0.0.0.0", "::", "")  # listen on every interface
MAX_JSON_BYTES = 64 * 1024  # a request names an image and a few settings: a few hundred bytes
SECURITY_HEADERS = {
    # Only the page's own script, style and images (PNG data URLs); no framing, no plugins, no forms elsewhere.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def host_name(host: str) -> str:
    """`host` as it appears in a URL or a `Host` header: an IPv6 address in brackets, lower case."""
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def machine_names() -> set[str]:
    """This machine's addresses (every interface) and names: what another machine may type to reach it."""
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    for addresses in psutil.net_if_addrs().values():
        names |= {host_name(a.address.split("%")[0]) for a in addresses
                  if a.family in (socket.AF_INET, socket.AF_INET6)}
    return names


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The `Host` values of requests to `host:port`: the loopback names and `host` (for a wildcard
    address, this machine's addresses and names), with the port (and without it on port 80, as
    browsers send it)."""
    names = {*LOOPBACK_NAMES, host_name(host)}
    if host.strip() in WILDCARDS:
        names |= machine_names()
    hosts = {f"{name}:{port}" for name in names}
    return frozenset(hosts | names if port == 80 else hosts)


def check_request(request: Request, endpoint: str, hosts: frozenset[str], token: str) -> None:
    """Refuse a request from elsewhere (403) or with a body type the endpoint does not take (415)."""
    host = request.headers.get("Host", "").strip().lower()
    if host not in hosts:
        raise ServeError(f"the Host header {host[:100]!r} is not this server's address; "
                         "open the address the server printed", 403)
    origin = request.headers.get("Origin")
    if origin is not None and origin.strip().lower() not in {f"http://{h}" for h in hosts}:
        raise ServeError(f"requests from {origin[:100]!r} are refused: only the server's own page may call it", 403)
    if not request.path.startswith("/api/"):
        return
    given = request.headers.get(TOKEN_HEADER)
    if given is None and request.method in ("GET", "HEAD"):
        given = request.args.get(TOKEN_PARAM)
    if given is None or not hmac.compare_digest(given.encode(), token.encode()):
        raise ServeError(f"the API needs the server's token in the {TOKEN_HEADER} header; "
                         "it is in the page the server serves (<meta name=\"miniplaces-token\">)", 403)
    if request.method == "POST":
        wanted = "multipart/form-data" if endpoint == "upload" else "application/json"
        if request.mimetype != wanted:
            raise ServeError(f"{request.path} takes {wanted} bodies; got {request.mimetype or 'none'!r}", 415)


def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body; a 400 for anything else (too large, not JSON, nested too deep)."""
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise ServeError(f"the request body is larger than {MAX_JSON_BYTES // 1024} KB", 413)
    data = request.get_data(cache=False)
    if len(data) > MAX_JSON_BYTES:  # a chunked body has no Content-Length
        raise ServeError(f"the request body is larger than {MAX_JSON_BYTES // 1024} KB", 413)
    try:
        payload = json.loads(data or b"{}")
    except RecursionError:
        raise ServeError("the request body is nested too deeply; send a flat JSON object") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ServeError(f"the request body is not JSON ({err})") from None
    if not isinstance(payload, dict):
        raise ServeError("the request body must be a JSON object")
    return payload


def fields(body: dict[str, Any], types: dict[str, tuple[type, ...]]) -> dict[str, Any]:
    """The body's fields, each of its expected types or null; a 400 naming an unknown or mistyped one."""
    unknown = sorted(set(body) - set(types))
    if unknown:
        raise ServeError(f"unknown field {unknown[0][:40]!r}; this request takes {', '.join(types)}")
    for name, value in body.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, types[name])):
            kinds = " or ".join("number" if t in (int, float) else "string" for t in dict.fromkeys(types[name]))
            raise ServeError(f"{name} must be a {kinds}; got {type(value).__name__} {_short(value)}")
    return {name: body.get(name) for name in types}


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, dict | list) else ("{…}" if isinstance(value, dict) else "[…]")
    return text if len(text) <= 40 else text[:40] + "…"


def secure(response: Response) -> Response:
    """The response with the headers that keep other sites from framing or sniffing it."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
