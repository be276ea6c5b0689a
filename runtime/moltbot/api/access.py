"""Per-request metrics and the access log line."""

from __future__ import annotations

import logging
import time

from sanic import Request

from moltbot import metrics
from moltbot.api.serving import RequestStats

access_log = logging.getLogger("moltbot.access")


def observe(request: Request, status: int) -> None:
    """Metrics and the access log line for a finished request."""
    if not getattr(request.ctx, "counted", False):
        return
    request.ctx.counted = False
    request.app.ctx.active.discard(request)
    route = request.uri_template or "unmatched"
    if request.route is None:
        route = "unmatched"
    elapsed = time.monotonic() - request.ctx.started
    metrics.REQUESTS.labels(route, request.method, str(status)).inc()
    metrics.REQUEST_LATENCY.labels(route, request.method).observe(elapsed)
    stats: RequestStats = request.ctx.stats
    if route in ("/health", "/ready", "/metrics") and status < 400:
        return  # probes and scrapes would drown the log
    fields = {"request_id": request.ctx.request_id, "method": request.method, "route": route,
              "status": status, "latency_ms": round(elapsed * 1000, 2), "model": stats.model,
              "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
              "client": request.client_ip}
    if stats.prompt is not None:  # the log_prompts setting
        fields.update(prompt=stats.prompt, output=stats.output)
    access_log.info("%s %s %s", request.method, request.path, status, extra=fields)
