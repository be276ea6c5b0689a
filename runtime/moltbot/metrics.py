"""Prometheus metrics of the runtime, all prefixed `moltbot_`.

monitoring/ (rules, dashboards) is written against these names and labels: change them together.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client
REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# HTTP layer. `route` is the route pattern (e.g. /v1/chat/completions), never the raw path.
REQUESTS = Counter(
    "moltbot_requests", "HTTP requests answered, by route, method and status code.",
    ["route", "method", "status"], registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "moltbot_request_duration_seconds", "Time from request received to response complete.",
    ["route", "method"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
IN_FLIGHT = Gauge("moltbot_http_requests_in_flight", "HTTP requests being handled.", registry=REGISTRY)
READY = Gauge("moltbot_ready", "1 once loading has finished with a model serving, or with none configured (models "
              "that failed are reported, not waited for); 0 while loading, when every model failed, and while "
              "draining.", registry=REGISTRY)

# Generation.
TIME_TO_FIRST_TOKEN = Histogram(
    "moltbot_time_to_first_token_seconds", "Time from admission to the first generated token.",
    ["model"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
INTER_TOKEN_LATENCY = Histogram(
    "moltbot_inter_token_latency_seconds", "Time between consecutive generated tokens of one request.",
    ["model"], buckets=_TOKEN_BUCKETS, registry=REGISTRY,
)
PROMPT_TOKENS = Counter("moltbot_prompt_tokens", "Prompt tokens processed.", ["model"], registry=REGISTRY)
GENERATION_TOKENS = Counter("moltbot_generation_tokens", "Tokens generated.", ["model"], registry=REGISTRY)
QUEUED = Gauge("moltbot_queued_requests", "Requests admitted and waiting for a slot.", ["model"], registry=REGISTRY)
RUNNING = Gauge("moltbot_running_requests", "Requests in the running batch.", ["model"], registry=REGISTRY)
MAX_QUEUED = Gauge("moltbot_max_queued_requests", "Queue capacity (admission bound) per model.", ["model"],
                   registry=REGISTRY)
MAX_RUNNING = Gauge("moltbot_max_running_requests", "Batch capacity per model.", ["model"], registry=REGISTRY)
REJECTED = Counter("moltbot_rejected_requests", "Requests refused with 429 because the model's queue was full.",
                   ["model"], registry=REGISTRY)

# Models.
MODEL_LOAD_SECONDS = Gauge("moltbot_model_load_seconds", "Seconds the last load of a model took.", ["model"],
                           registry=REGISTRY)
MODEL_LOAD_FAILURES = Counter("moltbot_model_load_failures", "Model configs that failed to load.", ["model"],
                              registry=REGISTRY)
# `type` is the older single word for source and backend (local, remote or service); `graph` (genai | optimum)
# and `precision` (fp32, fp16, int8, int4) are "none" for models without a local graph.
MODEL_INFO = Gauge("moltbot_model_info", "1 for each served model, with where and how it runs.",
                   ["model", "task", "type", "provider", "source", "backend", "graph", "precision"],
                   registry=REGISTRY)
STALLED_SECONDS = Gauge("moltbot_decode_stalled_seconds", "How long the model's scheduler pass under way has run "
                        "(0 between passes); a pass that does not end is a wedged model.", ["model"],
                        registry=REGISTRY)
WATCHDOG_EXITS = Gauge("moltbot_watchdog_exits", "Times this server exited because a model's decode stalled "
                       "(recorded in the data dir, so the restarted process reports them).", registry=REGISTRY)
STARTUP_SECONDS = Gauge("moltbot_startup_seconds", "Seconds from process start to ready.", registry=REGISTRY)

# Plugins.
PLUGIN_CALLS = Counter("moltbot_plugin_calls", "Plugin executions, by outcome (ok, error, timeout, invalid).",
                       ["plugin", "outcome"], registry=REGISTRY)
PLUGIN_LATENCY = Histogram("moltbot_plugin_duration_seconds", "Plugin execution time.", ["plugin"],
                           buckets=_LATENCY_BUCKETS, registry=REGISTRY)
PLUGIN_LOAD_ERRORS = Counter("moltbot_plugin_load_errors", "Plugins that failed to load.", ["plugin"],
                             registry=REGISTRY)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
