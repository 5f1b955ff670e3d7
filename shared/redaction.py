"""Keeps secrets (the Slack bot token and webhook URL, passwords, tokens) out of logs, error
strings and delivery records.

Error text is built from safe parts (Slack's error code, the exception's class) wherever possible;
this is the second line of defence for text that comes from libraries (aiohttp puts request URLs
into some exception messages, slack-sdk logs webhook URLs at DEBUG).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# Token- and webhook-shaped strings are masked even if they are not the configured ones.
_SLACK_SECRET_PATTERNS = re.compile(r"xox[a-z]-[A-Za-z0-9-]+|hooks\.slack\.com/\S+|/services/T\w+/B\w+/\w+")
MASK = "[redacted]"
MAX_ERROR_CHARS = 300


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first: the webhook URL must be masked whole before its path is.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return _SLACK_SECRET_PATTERNS.sub(MASK, text)

    def error_text(self, text: str) -> str:
        """Redacted, single-line and bounded: fit for a delivery record or a log line."""
        return self(" ".join(text.split()))[:MAX_ERROR_CHARS]

    def exception_text(self, exc: BaseException) -> str:
        detail = str(exc)
        return self.error_text(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)


class RedactingFilter(logging.Filter):
    """Rewrites records of the logger it is attached to (slack-sdk logs through the one we pass it)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._redactor(message)
        if redacted != message or record.exc_info:
            record.msg, record.args = redacted, None
            # A traceback's text could hold a secret too; the redacted message is enough here.
            record.exc_info, record.exc_text = None, None
        return True


def quiet_slack_logger(redactor: Redactor) -> logging.Logger:
    """The logger handed to slack-sdk clients: no DEBUG dumps of URLs and bodies, and redacted.

    slack-sdk checks `logger.level <= DEBUG` before dumping requests, so a logger left at NOTSET
    would log the webhook URL whenever the root logger is at DEBUG.
    """
    logger = logging.getLogger("services.alerting.slack_sdk")
    logger.setLevel(logging.WARNING)
    for old in [f for f in logger.filters if isinstance(f, RedactingFilter)]:
        logger.removeFilter(old)
    logger.addFilter(RedactingFilter(redactor))
    return logger
