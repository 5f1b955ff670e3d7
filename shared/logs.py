"""Log lines of every service: text or JSON (LOG_FORMAT), with secrets masked either way.

faust (through mode) sets up logging when the worker starts; `logging_config()` is handed to it
and merged over mode's defaults, replacing the one "default" handler. The level stays with
`faust worker -l`.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable
from typing import Any

import orjson

from shared.redaction import Redactor


class MaskSecrets(logging.Filter):
    """Masks secret strings in the message and in the traceback of every record a handler emits."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.redact = Redactor(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self.redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO-8601), level, service, logger, message, and the
    traceback as one string when there is one."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


def logging_config(service: str, log_format: str, secrets: Iterable[str]) -> dict[str, Any]:
    handler: dict[str, Any] = {"filters": ["mask_secrets"]}
    if log_format == "json":
        handler |= {"class": "logging.StreamHandler", "formatter": "json"}
    else:  # mode's own coloured text lines
        handler |= {"class": "colorlog.StreamHandler", "formatter": "colored"}
    return {
        "merge": True,
        "formatters": {"json": {"()": JsonFormatter, "service": service}},
        "filters": {"mask_secrets": {"()": MaskSecrets, "secrets": list(secrets)}},
        "handlers": {"default": handler},
    }
