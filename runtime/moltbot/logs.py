"""JSON logs: one object per line, on stdout and in a size-rotated file in the logs dir."""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Attributes every LogRecord has; anything else passed with `extra=` becomes a field of the JSON object.
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
LOG_FILE = "moltbot.log"


# A URL in free text: a scheme, "://", then anything up to white space or a quote.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def redact_url(url: str) -> str:
    """The URL without its user info (user:password@), query string (signatures, tokens) and fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_urls(text: str) -> str:
    """Every URL in `text` with its user info and query string removed (see redact_url)."""
    if "://" not in text:
        return text
    def replace(match: re.Match[str]) -> str:
        url = match.group(0)
        tail = len(url) - len(url.rstrip(".,:;)]}"))  # punctuation after a URL is the sentence's, not the URL's
        return redact_url(url[:len(url) - tail]) + url[len(url) - tail:]

    return _URL.sub(replace, text)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per record; URLs in the message, fields and traceback lose user info and query strings
    (signed download URLs, tokens), so nothing of the kind reaches the log file or a log shipper."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact_urls(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = _redacted(value)
        if record.exc_info:
            entry["exception"] = redact_urls(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str, logs_dir: Path | None, max_bytes: int, backups: int) -> Path | None:
    """Send the moltbot and sanic loggers to stdout and to <logs_dir>/moltbot.log as JSON lines."""
    formatter = JsonFormatter()
    handlers: list[logging.Handler] = []
    stdout = logging.StreamHandler(sys.stdout)
    stdout.setFormatter(formatter)
    handlers.append(stdout)
    log_path = None
    if logs_dir is not None:
        try:
            Path(logs_dir).mkdir(parents=True, exist_ok=True)
            log_path = Path(logs_dir) / LOG_FILE
            rotating = logging.handlers.RotatingFileHandler(log_path, maxBytes=max_bytes, backupCount=backups,
                                                            encoding="utf-8")
            rotating.setFormatter(formatter)
            handlers.append(rotating)
        except OSError as exc:
            log_path = None
            print(json.dumps({"level": "WARNING", "logger": "moltbot",
                              "message": f"cannot write logs to {logs_dir}: {exc}; logging to stdout only"}),
                  file=sys.stdout, flush=True)
    for name in ("moltbot", "sanic.root", "sanic.error", "sanic.server", "sanic.websockets"):
        logger = logging.getLogger(name)
        logger.handlers = list(handlers)
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("sanic.access").disabled = True  # moltbot writes its own access log
    return log_path
