"""JSON logs: one object per line, on stdout and in a size-rotated file in the logs dir."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path

# Attributes every LogRecord has; anything else passed with `extra=` becomes a field of the JSON object.
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
LOG_FILE = "moltbot.log"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
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
