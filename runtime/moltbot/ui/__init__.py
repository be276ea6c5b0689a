"""The chat page: static HTML, CSS and JS (third-party JS vendored in static/vendor/) served at `/` and `/ui/`.

The page talks to the API like any client (GET /v1/models, GET /v1/plugins, the /v1/ws WebSocket); nothing is
stored on the server. Every response carries a strict Content-Security-Policy (no inline script or style, no
other origin), `X-Content-Type-Options: nosniff` and caching headers: the page itself is revalidated on each
load (`no-cache` with an ETag), the files it names carry their content hash in the URL and are kept a day.
`MOLTBOT_UI=off` leaves the routes out (404)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, raw

from moltbot.api.errors import APIError

STATIC = Path(__file__).resolve().parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
         ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8"}
ASSET_CACHE = "public, max-age=86400"
PAGE_CACHE = "no-cache"
# In index.html, {{asset:<path>}} becomes /ui/<path>?v=<first 12 hex digits of its sha256>.
_ASSET = re.compile(r"\{\{asset:([A-Za-z0-9_./-]+)\}\}")


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str
    cache_control: str


def load_files(root: Path = STATIC) -> dict[str, StaticFile]:
    """Every served file by its path under static/ (read once: a few hundred kB)."""
    files: dict[str, StaticFile] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix not in TYPES:
            continue
        body = path.read_bytes()
        name = path.relative_to(root).as_posix()
        files[name] = StaticFile(body, TYPES[path.suffix], _etag(body), ASSET_CACHE)
    index = files.get("index.html")
    if index is None:
        raise FileNotFoundError(f"{root / 'index.html'} is missing: the chat page's files are not installed")

    def asset_url(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in files:
            raise FileNotFoundError(f"index.html names {name}, which is not in {root}")
        return f"/ui/{name}?v={files[name].etag.strip(chr(34))[:12]}"

    page = _ASSET.sub(asset_url, index.body.decode()).encode()
    files["index.html"] = StaticFile(page, index.content_type, _etag(page), PAGE_CACHE)
    return files


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def create_blueprint(root: Path = STATIC) -> Blueprint:
    files = load_files(root)
    bp = Blueprint("ui")

    def send(request: Request, item: StaticFile) -> HTTPResponse:
        headers = {**SECURITY_HEADERS, "cache-control": item.cache_control, "etag": item.etag}
        if item.etag in (request.headers.get("if-none-match") or ""):
            return HTTPResponse(status=304, headers=headers)
        return raw(item.body, content_type=item.content_type, headers=headers)

    async def page(request: Request) -> HTTPResponse:
        return send(request, files["index.html"])

    async def asset(request: Request, name: str) -> HTTPResponse:
        item = files.get(name)
        if item is None:
            raise APIError(404, f"No such file: /ui/{name}", code="not_found")
        return send(request, item)

    bp.add_route(page, "/", methods=["GET", "HEAD"], name="page_root")
    bp.add_route(page, "/ui", methods=["GET", "HEAD"], name="page_ui", strict_slashes=True)
    bp.add_route(page, "/ui/", methods=["GET", "HEAD"], name="page_ui_slash", strict_slashes=True)
    bp.add_route(asset, "/ui/<name:path>", methods=["GET", "HEAD"], name="asset")
    return bp
