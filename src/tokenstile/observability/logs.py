"""Log records as JSON lines (``tokenstile serve --log-format json``) and the access record.

One line per finished request goes to the ``tokenstile.access`` logger at INFO: who called
(ids and names, never a key), which model was asked for and which served, tokens, cost,
outcome, status and latency. With the default text format that logger stays below its
level and nothing is built or written, as before.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from tokenstile.types import LedgerRow

ACCESS_LOGGER = "tokenstile.access"
LOG_FORMATS = ("text", "json")

access_log = logging.getLogger(ACCESS_LOGGER)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def access_fields(row: LedgerRow, authenticated: bool = True) -> dict[str, Any]:
    """The access record of one finished request, from its ledger row."""
    return {
        "request_id": row.id,
        "organization": row.organization if authenticated else None,
        "project": row.project,
        "user": row.user,
        "key_id": row.key_id,
        "feature": row.feature,
        "api": row.api,
        "requested_model": row.requested_model,
        "served_model": row.served_model,
        "upstream": row.upstream,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cached_input_tokens": row.cached_input_tokens,
        "cost_usd": row.cost_nano / 1e9,
        "estimated": row.estimated,
        "outcome": row.outcome,
        "block_reason": row.block_reason,
        "status": row.status,
        "latency_ms": row.latency_ms,
        "ttfb_ms": row.ttfb_ms,
        "streamed": row.streamed,
        "cache": row.cache,
        "degraded": row.degraded or None,
    }


def log_access(row: LedgerRow, authenticated: bool = True,
               trace_id: str | None = None) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields = access_fields(row, authenticated)
    if trace_id:
        fields["trace_id"] = trace_id
    access_log.info("%s %s %s -> %d %s", row.id, row.api, row.requested_model or "-",
                    row.status, row.outcome, extra={"access": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's extras
    (the access record's fields at the top level) and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            out["event"] = "request"
            out.update(access)
        else:
            out["message"] = record.getMessage()
            for name, value in vars(record).items():
                if name not in _STANDARD and not name.startswith("_"):
                    out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


def _iso(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + \
        f".{int((created - seconds) * 1000):03d}Z"


def log_config(log_format: str) -> dict[str, Any] | None:
    """The ``logging.config`` dict ``tokenstile serve`` hands uvicorn (which applies it in
    every worker process too); None keeps uvicorn's own text setup."""
    if log_format == "text":
        return None
    handler = {"class": "logging.StreamHandler", "formatter": "json",
               "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "uvicorn": {"handlers": [], "level": "WARNING", "propagate": True},
            "uvicorn.error": {"handlers": [], "level": "WARNING", "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "tokenstile": {"level": "INFO"},
        },
    }


def configure(log_format: str) -> None:
    """Apply the format to this process (the CLI's own lines before uvicorn starts)."""
    config = log_config(log_format)
    if config is not None:
        import logging.config

        logging.config.dictConfig(config)
