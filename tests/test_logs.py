"""Log lines: JSON when asked, secrets masked in messages and tracebacks in either format."""

from __future__ import annotations

import io
import logging
import logging.config

import orjson

from shared.logs import logging_config
from shared.settings import Settings

SECRET = "s3cr3t-pass-word"


def configured_logger(log_format: str, stream: io.StringIO) -> logging.Logger:
    config = logging_config("ctr", log_format, [SECRET])
    config.pop("merge")
    config["handlers"]["default"]["stream"] = stream
    config["handlers"]["default"]["class"] = "logging.StreamHandler"
    if log_format != "json":
        config["handlers"]["default"]["formatter"] = "plain"
        config["formatters"]["plain"] = {"format": "%(levelname)s %(message)s"}
    config |= {"version": 1, "disable_existing_loggers": False}
    config["loggers"] = {"test.logs": {"handlers": ["default"], "level": "INFO", "propagate": False}}
    logging.config.dictConfig(config)
    return logging.getLogger("test.logs")


def test_json_lines_carry_service_level_and_message_and_mask_secrets():
    out = io.StringIO()
    log = configured_logger("json", out)
    log.info("connected to %s", f"http://app:{SECRET}@clickhouse:8123/db")
    try:
        raise RuntimeError(f"login failed with {SECRET}")
    except RuntimeError:
        log.exception("insert failed")
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["service"], r["level"]) for r in lines] == [("ctr", "INFO"), ("ctr", "ERROR")]
    assert lines[0]["message"] == "connected to http://app:[redacted]@clickhouse:8123/db"
    assert "RuntimeError: login failed with [redacted]" in lines[1]["exception"]
    assert SECRET not in out.getvalue()


def test_text_lines_mask_secrets_too():
    out = io.StringIO()
    log = configured_logger("text", out)
    log.warning("token xoxb-1234-abcd and %s", SECRET)
    assert out.getvalue() == "WARNING token [redacted] and [redacted]\n"


def test_settings_name_their_secrets():
    s = Settings(
        clickhouse_dsn="https://app:pa55word@ch:8443/db",
        kafka_sasl_password="kafka-pw",
        query_token="tok-123",
    )
    assert sorted(s.secret_values()) == ["kafka-pw", "pa55word", "tok-123"]
