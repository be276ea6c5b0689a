"""The Sanic application: middleware (request ids, API keys, metrics, access log), error handlers, and the
model-loading lifecycle. Routes live in routes.py; the work in serving.py and the engine."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
import math
import sqlite3
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from urllib.parse import urlsplit

from sanic import Request, Sanic
from sanic.config import Config
from sanic.exceptions import MethodNotAllowed
from sanic.response import BaseHTTPResponse, HTTPResponse

from moltbot import READY_LINE, metrics
from moltbot.api import plugin_routes, routes
from moltbot.api.access import observe
from moltbot.api.errors import APIError, error_json
from moltbot.api.responses import ResponseStore
from moltbot.api.serving import OpenAIServing, RequestStats
from moltbot.engine.registry import ModelRegistry
from moltbot.plugins.manager import PluginManager
from moltbot.settings import Settings
from moltbot.watchdog import Watchdog

log = logging.getLogger("moltbot.api")

OPEN_PATHS = ("/health", "/ready", "/openapi.json")
# Routes that change server state carry `ctx_admin=True` (route.ctx.admin): with admin keys set, they need one (403
# for an ordinary key). Plugin calls that change state (config.json "admin") are checked by the plugin manager.
# The WebSocket route that takes its key as a subprotocol carries `ctx_key_subprotocol=True`. The metrics route
# carries `ctx_metrics=True` (MOLTBOT_METRICS_REQUIRE_KEY), the probes `ctx_probe=True`; neither checks Host.
App = Sanic[Config, SimpleNamespace]


@dataclass
class ServiceState:
    status: str = "loading"  # loading | ready | draining
    process_started: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    on_ready: list[Callable[[int], None]] = field(default_factory=list)  # called with the port once ready

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def create_app(settings: Settings, registry: ModelRegistry | None = None, name: str = "moltbot",
               process_started: float | None = None) -> App:
    app: App = Sanic(name, configure_logging=False)
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    app.config.WEBSOCKET_MAX_SIZE = settings.max_body_bytes
    app.config.RESPONSE_TIMEOUT = math.ceil(settings.request_timeout) + 30  # our own timeout answers first, as JSON
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    app.config.NOISY_EXCEPTIONS = False
    app.config.MOTD = False

    registry = registry or ModelRegistry(settings)
    app.ctx.settings = settings
    app.ctx.registry = registry
    app.ctx.serving = OpenAIServing(registry, settings)
    app.ctx.plugins = PluginManager(settings, models=registry)
    app.ctx.responses = _response_store(settings)
    app.ctx.state = ServiceState(process_started=process_started or time.monotonic())
    # Admin keys work on every route; ordinary keys on all but the admin ones (ctx_admin routes, admin plugin calls).
    app.ctx.admin_keys = [k.encode() for k in settings.all_admin_api_keys()]
    app.ctx.api_keys = [k.encode() for k in settings.all_api_keys()] + app.ctx.admin_keys
    app.ctx.allowed_hosts = {h.strip().strip("[]").lower().rstrip(".") for h in settings.allowed_hosts}
    # Requests being handled; weak, so that a handler cancelled by a client going away is not counted forever.
    app.ctx.active = weakref.WeakSet()
    app.ctx.busy_websockets = set()  # sockets handling a message: the drain lets them finish
    metrics.IN_FLIGHT.set_function(lambda: len(app.ctx.active))
    app.blueprint(routes.bp)
    app.blueprint(plugin_routes.bp)
    if settings.ui:
        from moltbot.ui import create_blueprint  # the chat page (MOLTBOT_UI)

        app.blueprint(create_blueprint())

    app.on_request(_start_request)
    app.middleware(_finish_request, attach_to="response")
    app.error_handler.add(Exception, _handle_error)
    app.after_server_start(_start_loading)
    app.before_server_stop(_stop_models)
    return app


# ---- middleware -------------------------------------------------------------------------------------
async def _start_request(request: Request) -> HTTPResponse | None:
    incoming = request.headers.get("x-request-id", "")
    request.ctx.request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
    request.ctx.started = time.monotonic()
    request.ctx.stats = RequestStats()
    request.app.ctx.active.add(request)
    request.ctx.counted = True
    request.ctx.host_allowed = _host_allowed(request)
    if not request.ctx.host_allowed and not request.app.ctx.api_keys and not _route_context(request, "probe") \
            and not _route_context(request, "metrics"):
        raise APIError(421, "This server has no API keys: it answers only requests addressed (Host header) to "
                       "localhost, an IP address such as 127.0.0.1, or a name in MOLTBOT_ALLOWED_HOSTS",
                       code="host_not_allowed")
    preflight = _answer_preflight(request)  # a browser's CORS preflight never carries a key
    if preflight is not None:
        return preflight
    if _route_flag(request, "websocket") and not _websocket_origin_allowed(request):
        raise APIError(403, "A WebSocket from this page's origin is refused: only this server's own pages and the "
                       "origins in cors_origins may open one", code="origin_not_allowed")
    request.ctx.authorised = bool(request.app.ctx.api_keys) and _authorised(request)  # a valid key was offered
    request.ctx.api_key = offered_key(request) if request.ctx.authorised else ""  # whose stored responses
    # Admin: when no admin key is configured, everyone who is let in; otherwise the holders of an admin key.
    request.ctx.admin = not request.app.ctx.admin_keys or (
        request.ctx.authorised and _authorised(request, request.app.ctx.admin_keys))
    if _needs_key(request) and not request.ctx.authorised:
        raise APIError(401, "Missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key'",
                       code="invalid_api_key")
    if _route_context(request, "admin") and not request.ctx.admin:
        raise APIError(403, "This route changes server state: it needs an admin key (admin_api_keys)",
                       code="admin_key_required")
    # A browser sends a cross-site form or text/plain POST without asking first (no preflight); JSON it must ask for.
    if request.method == "POST" and _takes_post(request) and _media_type(request) != "application/json":
        raise APIError(415, "Send the request body as JSON with Content-Type: application/json",
                       code="unsupported_media_type")
    return None


def _takes_post(request: Request) -> bool:
    """Whether the matched route has POST (else Sanic answers the 405 that the method deserves)."""
    return request.route is not None and "POST" in request.route.methods


def _media_type(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";")[0].strip().lower()


def _route_context(request: Request, name: str) -> bool:
    """A marker the matched route carries in its context (`ctx_<name>=True` where the route is added)."""
    return request.route is not None and bool(getattr(request.route.ctx, name, False))


def _route_flag(request: Request, name: str) -> bool:
    """A flag Sanic sets on the matched route (`websocket` for a WebSocket route)."""
    return request.route is not None and bool(getattr(request.route.extra, name, False))


def _response_store(settings: Settings) -> ResponseStore | None:
    """The store of Responses-API responses; none (stateless, said in the log) without a data dir or where its
    file cannot be opened: a read-only disk must not keep the models from being served."""
    if settings.data_dir is None:
        return None
    try:
        return ResponseStore(settings.data_dir / "responses.sqlite3", settings.responses_max_stored,
                             settings.responses_max_age_hours * 3600)
    except (OSError, sqlite3.Error) as exc:
        log.warning("responses are not stored: %s: %s", settings.data_dir, exc)
        return None


def _needs_key(request: Request) -> bool:
    if not request.app.ctx.api_keys:
        return False
    path = request.path
    if path.startswith("/v1/") or path == "/v1" or _route_context(request, "needs_key"):
        return True
    return _route_context(request, "metrics") and request.app.ctx.settings.metrics_require_key


def offered_key(request: Request) -> str:
    """The API key the request offers (Bearer, x-api-key or the WebSocket's), "" for none."""
    header = request.headers.get("authorization", "")
    offered = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    return offered or _websocket_key(request)


def _authorised(request: Request, keys: list[bytes] | None = None) -> bool:
    offered = offered_key(request)
    if not offered:
        return False
    candidate = offered.encode()
    # Compare against every key, always, so the time taken says nothing about which one nearly matched.
    matched = False
    for key in request.app.ctx.api_keys if keys is None else keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched


WS_KEY_PROTOCOL = "moltbot.key."


def _websocket_key(request: Request) -> str:
    """A browser cannot set headers on a WebSocket, so the chat page offers its key as a subprotocol,
    `moltbot.key.<base64url of the key, no padding>`, beside `moltbot` (the one the server picks). Taken only on
    the upgrade of the route that expects it (ctx_key_subprotocol), never on an ordinary request."""
    if request.headers.get("upgrade", "").lower() != "websocket" or not _route_context(request, "key_subprotocol"):
        return ""
    for protocol in request.headers.get("sec-websocket-protocol", "").split(","):
        protocol = protocol.strip()
        if protocol.startswith(WS_KEY_PROTOCOL):
            encoded = protocol[len(WS_KEY_PROTOCOL):]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, ValueError):
                return ""
    return ""


async def _finish_request(request: Request, response: BaseHTTPResponse) -> None:
    response.headers["x-request-id"] = getattr(request.ctx, "request_id", "") or uuid.uuid4().hex
    origin = _cors_origin(request)
    if origin:
        response.headers["access-control-allow-origin"] = origin
        response.headers["access-control-expose-headers"] = "x-request-id, retry-after"
        response.headers["vary"] = "Origin"
    if response.content_type and response.content_type.startswith("text/event-stream"):
        return  # a stream: observed by observe_stream_end when it ends
    observe(request, response.status)


# ---- the Host header (DNS rebinding) -----------------------------------------------------------------------
def _host_allowed(request: Request) -> bool:
    """Whether the Host header names this machine, an IP address or a name in allowed_hosts. A website can have its
    own name resolve to 127.0.0.1 (DNS rebinding): its page's requests then count as same-origin in the browser,
    WebSocket Origin included, but their Host still names the website. An IP address cannot be rebound, and
    browsers resolve localhost and *.localhost themselves. Only a server without keys refuses others (app.py's
    _start_request); a request without Host is no browser's."""
    host = request.headers.get("host")
    if host is None:
        return True
    allowed: set[str] = request.app.ctx.allowed_hosts
    name = _host_name(host)
    if not name:
        return False
    if "*" in allowed or name in allowed or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _host_name(host: str) -> str:
    """A Host header's name: lower case, without brackets, port or final dot; "" for one that names no host."""
    try:
        parts = urlsplit("//" + host)
        _ = parts.port  # a port that is not a number raises ValueError
    except ValueError:
        return ""
    return "" if parts.username is not None else (parts.hostname or "").rstrip(".")


# ---- WebSocket origins ---------------------------------------------------------------------------------
def _websocket_origin_allowed(request: Request) -> bool:
    """A browser sends Origin with every WebSocket handshake, and lets any page open a socket to any host (no CORS
    for WebSockets): without this check, a website the operator visits could drive a keyless server on
    127.0.0.1. Allowed: no Origin (not a browser), this server's own origin (the chat page), cors_origins."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    allowed: list[str] = request.app.ctx.settings.cors_origins
    if "*" in allowed or origin in allowed:
        return True
    return _same_origin(origin, request.host)


def _same_origin(origin: str, host: str) -> bool:
    """Whether `origin` (scheme://host[:port]) names the host and port of the request's Host header."""
    try:
        theirs = urlsplit(origin)
        their_port = theirs.port
        ours = urlsplit("//" + host)
        our_port = ours.port
    except ValueError:  # a port that is not a number, a bracket left open
        return False
    if theirs.scheme not in ("http", "https") or not theirs.hostname or not ours.hostname or ours.username:
        return False
    default = 443 if theirs.scheme == "https" else 80  # a Host without a port is on the scheme's default port
    return (theirs.hostname, their_port or default) == (ours.hostname, our_port or default)


# ---- CORS (the cors_origins setting) ------------------------------------------------------------------
CORS_ALLOW_HEADERS = "authorization, content-type, x-api-key, x-request-id"


def _cors_origin(request: Request) -> str | None:
    """The value of Access-Control-Allow-Origin for this request: its Origin when allowed, else None."""
    allowed: list[str] = request.app.ctx.settings.cors_origins
    origin = request.headers.get("origin")
    if not allowed or not origin:
        return None
    return origin if "*" in allowed or origin in allowed else None


def _answer_preflight(request: Request) -> HTTPResponse | None:
    """The answer to a browser's preflight (OPTIONS with Access-Control-Request-Method), or None for any other
    request. No route has OPTIONS, so a preflight is answered here, before any key is asked for (it never carries
    one): for an allowed origin (cors_origins) with the methods and headers; a Private Network Access preflight
    (a public page asking to reach this private address) is refused unless cors_origins lists its origin by name."""
    if request.method != "OPTIONS" or not request.headers.get("access-control-request-method"):
        return None
    private_network = "access-control-request-private-network" in request.headers
    if private_network and request.headers.get("origin") not in request.app.ctx.settings.cors_origins:
        return error_json(APIError(403, "A page on a public website may not reach this server on a private "
                                   "network (Private Network Access): list its origin in MOLTBOT_CORS_ORIGINS to "
                                   "allow it", code="private_network_access_refused"), request)
    if _cors_origin(request) is None:
        return None
    headers = {"access-control-allow-methods": "GET, POST, OPTIONS", "access-control-max-age": "600",
               "access-control-allow-headers": request.headers.get("access-control-request-headers")
               or CORS_ALLOW_HEADERS}
    if private_network:
        headers["access-control-allow-private-network"] = "true"
    return HTTPResponse(status=204, headers=headers)


# ---- errors ----------------------------------------------------------------------------------------
async def _handle_error(request: Request, exc: Exception) -> HTTPResponse:
    preflight = _answer_preflight(request) if isinstance(exc, MethodNotAllowed) else None
    return preflight or error_json(exc, request)


# ---- lifecycle -------------------------------------------------------------------------------------
async def _start_loading(app: App) -> None:
    app.ctx.loading = asyncio.get_running_loop().create_task(_load_models(app), name="load-models")
    app.ctx.watchdog = Watchdog(app.ctx.registry, app.ctx.settings)
    app.ctx.watchdog.start()


async def _load_models(app: App) -> None:
    state: ServiceState = app.ctx.state
    registry: ModelRegistry = app.ctx.registry
    try:
        await asyncio.to_thread(registry.load_all)
        await app.ctx.plugins.load_all()
    except Exception:  # never expected (each model's failure is its own), but never silent either
        log.exception("loading failed; the service stays not ready")
        return
    if state.status != "loading":
        return  # shutting down meanwhile
    if not registry.models and registry.failures:
        log.error("no model could be loaded; the service stays not ready (see the errors above)")
        return
    state.status = "ready"
    state.ready_at = time.monotonic()
    metrics.READY.set(1)
    metrics.STARTUP_SECONDS.set(state.ready_at - state.process_started)
    port = app.ctx.settings.port
    log.info("ready in %.2f s with models %s", state.ready_at - state.process_started, registry.model_names(),
             extra={"startup_seconds": round(state.ready_at - state.process_started, 3),
                    "models": registry.model_names()})
    for callback in state.on_ready:
        callback(port)


async def _stop_models(app: App) -> None:
    registry: ModelRegistry = app.ctx.registry
    registry.stopping.set()
    if getattr(app.ctx, "watchdog", None) is not None:
        app.ctx.watchdog.stop()  # a slow drain at shutdown is no stall
    loading = getattr(app.ctx, "loading", None)
    if loading is not None and not loading.done():
        # A model still loading (a download, an export) is left to its thread; the process exits anyway.
        await asyncio.wait([loading], timeout=app.ctx.settings.shutdown_timeout)
    await app.ctx.plugins.close()
    await registry.close()


def print_ready_line(port: int) -> None:
    print(READY_LINE.format(port=port), flush=True)
