"""Kafka TLS / SASL from settings, for faust apps and for plain aiokafka clients alike.

PLAINTEXT by default (the local broker). Credentials come only from the environment (SecretStr),
and nothing here logs them.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from shared.settings import Settings

SASL_MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_ssl_certfile:
        ctx.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None)
    return ctx


def _sasl(settings: Settings) -> tuple[str, str, str]:
    mechanism = settings.kafka_sasl_mechanism.upper()
    if mechanism not in SASL_MECHANISMS:
        raise ValueError(f"KAFKA_SASL_MECHANISM must be one of {sorted(SASL_MECHANISMS)}")
    if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
        raise ValueError("SASL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
    return mechanism, settings.kafka_sasl_username, settings.kafka_sasl_password.get_secret_value()


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """`broker_credentials` for faust.App."""
    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    if proto == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    if proto in ("SASL_PLAINTEXT", "SASL_SSL"):
        mechanism, user, password = _sasl(settings)
        return faust.SASLCredentials(
            username=user, password=password, mechanism=mechanism, ssl_context=ssl_context(settings)
        )
    raise ValueError(f"unknown KAFKA_SECURITY_PROTOCOL {proto!r}")


def aiokafka_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    ctx = ssl_context(settings)
    if ctx is not None:
        kwargs["ssl_context"] = ctx
    if settings.kafka_security_protocol.startswith("SASL"):
        mechanism, user, password = _sasl(settings)
        kwargs.update(sasl_mechanism=mechanism, sasl_plain_username=user, sasl_plain_password=password)
    return kwargs
