"""The Sanic application: middleware (request ids, API keys, metrics, access log), error handlers, and the
model-loading lifecycle. Routes live in routes.py; the work in serving.py and the engine."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import math
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

from sanic import Request, Sanic
from sanic.config import Config
from sanic.exceptions import MethodNotAllowed
from sanic.response import BaseHTTPResponse, HTTPResponse

from moltbot import READY_LINE, metrics
from moltbot.api import plugin_routes, routes
from moltbot.api.access import observe
from moltbot.api.errors import APIError, error_json
from moltbot.api.serving import OpenAIServing, RequestStats
from moltbot.engine.registry import ModelRegistry
from moltbot.plugins.manager import PluginManager
from moltbot.settings import Settings

log = logging.getLogger("moltbot.api")

OPEN_PATHS = ("/health", "/ready", "/openapi.json")
# Routes that change server state: with admin keys set, they need one (403 for an ordinary key). Plugin calls that
# change state (config.json "admin") are checked by the plugin manager.
ADMIN_ROUTES = {("POST", "/v1/plugins/reload")}
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
    app.ctx.state = ServiceState(process_started=process_started or time.monotonic())
    # Admin keys work on every route; ordinary keys on all but the admin ones (ADMIN_ROUTES, admin plugin calls).
    app.ctx.admin_keys = [k.encode() for k in settings.all_admin_api_keys()]
    app.ctx.api_keys = [k.encode() for k in settings.all_api_keys()] + app.ctx.admin_keys
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
    if _is_preflight(request):  # a browser's CORS preflight never carries a key
        return _preflight(request)
    request.ctx.authorised = bool(request.app.ctx.api_keys) and _authorised(request)  # a valid key was offered
    # Admin: when no admin key is configured, everyone who is let in; otherwise the holders of an admin key.
    request.ctx.admin = not request.app.ctx.admin_keys or (
        request.ctx.authorised and _authorised(request, request.app.ctx.admin_keys))
    if _needs_key(request) and not request.ctx.authorised:
        raise APIError(401, "Missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key'",
                       code="invalid_api_key")
    if (request.method, request.path.rstrip("/")) in ADMIN_ROUTES and not request.ctx.admin:
        raise APIError(403, "This route changes server state: it needs an admin key (admin_api_keys)",
                       code="admin_key_required")
    return None


def _needs_key(request: Request) -> bool:
    if not request.app.ctx.api_keys:
        return False
    path = request.path
    if path.startswith("/v1/") or path == "/v1":
        return True
    return path == "/metrics" and request.app.ctx.settings.metrics_require_key


def _authorised(request: Request, keys: list[bytes] | None = None) -> bool:
    header = request.headers.get("authorization", "")
    offered = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    offered = offered or _websocket_key(request)
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
    `moltbot.key.<base64url of the key, no padding>`, beside `moltbot` (the one the server picks)."""
    if request.headers.get("upgrade", "").lower() != "websocket":
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


# ---- CORS (the cors_origins setting) ------------------------------------------------------------------
CORS_ALLOW_HEADERS = "authorization, content-type, x-api-key, x-request-id"


def _cors_origin(request: Request) -> str | None:
    """The value of Access-Control-Allow-Origin for this request: its Origin when allowed, else None."""
    allowed: list[str] = request.app.ctx.settings.cors_origins
    origin = request.headers.get("origin")
    if not allowed or not origin:
        return None
    return origin if "*" in allowed or origin in allowed else None


def _is_preflight(request: Request) -> bool:
    return (request.method == "OPTIONS" and bool(request.headers.get("access-control-request-method"))
            and _cors_origin(request) is not None)


def _preflight(request: Request) -> HTTPResponse:
    """A browser's CORS preflight (OPTIONS with Access-Control-Request-Method): no route has OPTIONS, so it is
    answered here, before any key is asked for (a preflight never carries one)."""
    headers = {"access-control-allow-methods": "GET, POST, OPTIONS", "access-control-max-age": "600",
               "access-control-allow-headers": request.headers.get("access-control-request-headers")
               or CORS_ALLOW_HEADERS}
    return HTTPResponse(status=204, headers=headers)


# ---- errors ----------------------------------------------------------------------------------------
async def _handle_error(request: Request, exc: Exception) -> HTTPResponse:
    if isinstance(exc, MethodNotAllowed) and _is_preflight(request):
        return _preflight(request)
    return error_json(exc, request)


# ---- lifecycle -------------------------------------------------------------------------------------
async def _start_loading(app: App) -> None:
    app.ctx.loading = asyncio.get_running_loop().create_task(_load_models(app), name="load-models")


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
    loading = getattr(app.ctx, "loading", None)
    if loading is not None and not loading.done():
        # A model still loading (a download, an export) is left to its thread; the process exits anyway.
        await asyncio.wait([loading], timeout=app.ctx.settings.shutdown_timeout)
    await app.ctx.plugins.close()
    await registry.close()


def print_ready_line(port: int) -> None:
    print(READY_LINE.format(port=port), flush=True)
