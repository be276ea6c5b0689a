"""Runs the app in this one process: HTTP, and HTTPS beside it when a certificate is set. On SIGTERM or SIGINT
it stops accepting, turns /ready to 503, lets in-flight requests finish (up to shutdown_timeout) and returns."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import ssl
import time

from sanic import Websocket
from sanic.application.state import ApplicationServerInfo
from sanic.http.constants import HTTP
from sanic.server.async_server import AsyncioServer
from sanic.server.protocols.http_protocol import HttpProtocol

from moltbot import metrics
from moltbot.api.app import App, create_app, print_ready_line
from moltbot.settings import Settings, SettingsError

log = logging.getLogger("moltbot.api")


def tls_context(settings: Settings) -> ssl.SSLContext:
    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("HTTPS needs tls_cert and tls_key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def _listen(app: App, host: str, port: int, tls: ssl.SSLContext | None = None) -> AsyncioServer:
    """Binds and listens at once; requests are handled once startup() has run."""
    server = await app.create_server(host, port, ssl=tls, access_log=False, return_asyncio_server=True)
    assert server is not None  # as return_asyncio_server asks
    return server


def check_exposure(settings: Settings) -> None:
    """Refuses (SettingsError) to serve without API keys on an address other than loopback, unless
    allow_unauthenticated says so: the image binds 0.0.0.0, and `docker run -p 8080:8080` publishes that to the
    network, where anyone could use the models and run plugins with admin rights."""
    if _is_loopback(settings.host) or settings.all_api_keys() or settings.all_admin_api_keys():
        return
    if settings.allow_unauthenticated:
        log.warning("serving without API keys on %s (MOLTBOT_ALLOW_UNAUTHENTICATED): anyone who can reach port %d "
                    "can use the models and plugins", settings.host or "every address", settings.port)
        return
    raise SettingsError(
        f"host: {settings.host or 'every address'} is not a loopback address and no API keys are set: anyone who can "
        f"reach port {settings.port} could use the models and run plugins. Set MOLTBOT_API_KEYS_FILE (or "
        "MOLTBOT_API_KEYS), or bind to 127.0.0.1 (MOLTBOT_HOST), or set MOLTBOT_ALLOW_UNAUTHENTICATED=true to serve "
        "without keys anyway (behind a firewall, or a proxy that authenticates)")


def _is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # another name, or "" (every address)
        return False


async def serve(settings: Settings, process_started: float | None = None, app: App | None = None) -> None:
    check_exposure(settings)
    app = app or create_app(settings, process_started=process_started)
    app.ctx.state.on_ready.append(print_ready_line)
    servers = [await _listen(app, settings.host, settings.port)]
    if settings.tls_enabled:
        servers.append(await _listen(app, settings.host, settings.https_port, tls_context(settings)))
    # create_server leaves Sanic's list of servers empty, and then its start-up touch-up keeps the `alt-svc: ""`
    # placeholder on every response; told that every server speaks HTTP/1.1, it takes the header out.
    app.state.server_info[:] = [ApplicationServerInfo(settings={"version": HTTP.VERSION_1, "port": port})
                                for port in (settings.port, settings.https_port)[:len(servers)]]
    await servers[0].startup()
    await servers[0].before_start()
    log.info("listening", extra={"http": f"{settings.host}:{settings.port}",
                                 "https": f"{settings.host}:{settings.https_port}" if settings.tls_enabled else None})
    await servers[0].after_start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(app, servers, settings.shutdown_timeout, settings.shutdown_delay)


def _close_if_idle(conn: HttpProtocol, busy_websockets: set[Websocket]) -> bool:
    """Closes the connection unless a request (or a WebSocket message) is being handled on it."""
    websocket = getattr(conn, "websocket", None)
    if websocket is not None:
        if websocket in busy_websockets:
            return False
        conn.close_if_idle()  # closes a WebSocket with 1001 (going away)
        return True
    return bool(conn.close_if_idle())


async def drain(app: App, servers: list[AsyncioServer], timeout: float, delay: float) -> None:
    state = app.ctx.state
    state.status = "draining"
    metrics.READY.set(0)
    if delay > 0:
        log.info("draining: /ready answers 503; new connections accepted for %.1f s more", delay)
        await asyncio.sleep(delay)
    log.info("draining: no new connections; waiting up to %.0f s for requests in flight", timeout)
    for server in servers:
        server.close()  # stops accepting; connections stay
    deadline = time.monotonic() + timeout
    connections = [c for s in servers for c in s.connections]
    busy_websockets = app.ctx.busy_websockets
    while time.monotonic() < deadline:
        connections = [c for s in servers for c in s.connections if not _close_if_idle(c, busy_websockets)]
        if not connections:
            break
        await asyncio.sleep(0.05)
    for conn in connections:
        if getattr(conn, "websocket", None):
            conn.websocket.fail_connection(code=1001)
        else:
            conn.abort()
    if connections:
        log.warning("%d connection(s) cut at the shutdown timeout", len(connections))
    await servers[0].before_stop()
    await servers[0].after_stop()
    log.info("stopped")
