"""One Slack HTTP call = one `CallResult`, through slack-sdk's async clients (the loop never blocks).

slack-sdk's own retry handlers are switched off (`retry_handlers=[]`): the delivery loop retries
itself so every attempt is recorded, and a rate-limited alert waits in the table instead of
holding a coroutine (and a restart) hostage. Errors are reduced to Slack's error code or the
exception's class plus a redacted message: the token and webhook URL never leave this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from services.alerting.settings import AlertingSettings
from services.alerting.slack_messages import METADATA_EVENT_TYPE, SlackMessage
from shared.redaction import Redactor, quiet_slack_logger

# slack-sdk's aiohttp timeout should fire first; this only guards against a call that never ends.
_TIMEOUT_GRACE_SECONDS = 1.0
HISTORY_PAGE_SIZE = 200


@dataclass(frozen=True)
class CallResult:
    ok: bool
    http_status: int | None = None  # None: no HTTP response (timeout, connection error)
    error: str | None = None  # Slack's error code or a redacted exception summary
    retry_after_s: float | None = None
    ts: str | None = None
    channel: str | None = None
    # The request may have reached Slack (timeout, dropped connection, 5xx): a re-post may duplicate.
    maybe_delivered: bool = False


class SlackTransport(Protocol):
    # True: messages have a ts, so threads, chat.update and the posted-message lookup work.
    threads: bool

    async def post(self, channel: str, message: SlackMessage, thread_ts: str | None = None) -> CallResult: ...

    async def update(self, channel: str, ts: str, message: SlackMessage) -> CallResult: ...

    async def find_posted(
        self, channel: str, anomaly_id: str, oldest_s: float, thread_ts: str | None = None
    ) -> CallResult: ...


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") if headers is not None else None
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


class SlackBotTransport:
    """chat.postMessage / chat.update / conversations.history|replies with a bot token."""

    threads = True

    def __init__(self, token: str, base_url: str, timeout_s: float, redactor: Redactor) -> None:
        self._redactor = redactor
        self._timeout_s = timeout_s
        self._client = AsyncWebClient(
            token=token,
            base_url=base_url,
            timeout=timeout_s,  # type: ignore[arg-type]  # aiohttp takes float seconds
            retry_handlers=[],
            logger=quiet_slack_logger(redactor),
        )

    async def _call(self, api: Callable[..., Awaitable[Any]], **kwargs: Any) -> tuple[CallResult, Any]:
        try:
            async with asyncio.timeout(self._timeout_s + _TIMEOUT_GRACE_SECONDS):
                response = await api(**kwargs)
        except SlackApiError as exc:
            return self._failed_response(exc.response), None
        except aiohttp.ClientConnectorError as exc:
            # Never connected: nothing reached Slack.
            return CallResult(ok=False, error=self._redactor.exception_text(exc)), None
        except Exception as exc:  # timeouts, dropped connections, anything unexpected
            return CallResult(ok=False, error=self._redactor.exception_text(exc), maybe_delivered=True), None
        return CallResult(
            ok=True, http_status=response.status_code, ts=response.get("ts"), channel=response.get("channel")
        ), response

    def _failed_response(self, response: Any) -> CallResult:
        status = getattr(response, "status_code", None)
        data = getattr(response, "data", None)
        if isinstance(data, dict) and data.get("error"):
            error = self._redactor.error_text(str(data["error"]))
        else:
            error = f"HTTP {status}"
        return CallResult(
            ok=False,
            http_status=status,
            error=error,
            retry_after_s=_retry_after(getattr(response, "headers", None)),
            maybe_delivered=status is not None and status >= 500,
        )

    async def post(self, channel: str, message: SlackMessage, thread_ts: str | None = None) -> CallResult:
        result, _ = await self._call(
            self._client.chat_postMessage,
            channel=channel,
            text=message.text,
            attachments=message.attachments,
            metadata=message.metadata,
            thread_ts=thread_ts,
            unfurl_links=False,
        )
        return result

    async def update(self, channel: str, ts: str, message: SlackMessage) -> CallResult:
        result, _ = await self._call(
            self._client.chat_update,
            channel=channel,
            ts=ts,
            text=message.text,
            attachments=message.attachments,
            metadata=message.metadata,
        )
        return result

    async def find_posted(
        self, channel: str, anomaly_id: str, oldest_s: float, thread_ts: str | None = None
    ) -> CallResult:
        """ok with ts=None: not posted; ok with ts: posted (ts of the message). One page only."""
        common = {"channel": channel, "oldest": f"{oldest_s:.6f}", "limit": HISTORY_PAGE_SIZE}
        if thread_ts is None:
            result, response = await self._call(
                self._client.conversations_history, include_all_metadata=True, **common
            )
        else:
            result, response = await self._call(
                self._client.conversations_replies, ts=thread_ts, include_all_metadata=True, **common
            )
        if not result.ok:
            return result
        for message in response.get("messages") or []:
            metadata = message.get("metadata") or {}
            payload = metadata.get("event_payload") or {}
            if metadata.get("event_type") == METADATA_EVENT_TYPE and payload.get("anomaly_id") == anomaly_id:
                return CallResult(
                    ok=True, http_status=result.http_status, ts=message.get("ts"), channel=channel
                )
        return CallResult(ok=True, http_status=result.http_status, channel=channel)


class SlackWebhookTransport:
    """An incoming webhook: post only (no ts, no threads, no updates, no lookup)."""

    threads = False

    def __init__(self, url: str, timeout_s: float, redactor: Redactor) -> None:
        self._redactor = redactor
        self._timeout_s = timeout_s
        self._client = AsyncWebhookClient(
            url=url,
            timeout=timeout_s,  # type: ignore[arg-type]
            retry_handlers=[],
            logger=quiet_slack_logger(redactor),
        )

    async def post(self, channel: str, message: SlackMessage, thread_ts: str | None = None) -> CallResult:
        try:
            async with asyncio.timeout(self._timeout_s + _TIMEOUT_GRACE_SECONDS):
                response = await self._client.send(text=message.text, attachments=message.attachments)
        except aiohttp.ClientConnectorError as exc:
            return CallResult(ok=False, error=self._redactor.exception_text(exc))
        except Exception as exc:
            return CallResult(ok=False, error=self._redactor.exception_text(exc), maybe_delivered=True)
        status = response.status_code
        if status == 200:
            return CallResult(ok=True, http_status=status)
        # Webhooks answer errors as short plain-text codes: no_service, invalid_token, ...
        body = (response.body or "").strip()
        return CallResult(
            ok=False,
            http_status=status,
            error=self._redactor.error_text(body[:100] or f"HTTP {status}"),
            retry_after_s=_retry_after(response.headers),
            maybe_delivered=status >= 500,
        )

    async def update(self, channel: str, ts: str, message: SlackMessage) -> CallResult:
        raise NotImplementedError("incoming webhooks cannot update messages")

    async def find_posted(
        self, channel: str, anomaly_id: str, oldest_s: float, thread_ts: str | None = None
    ) -> CallResult:
        raise NotImplementedError("incoming webhooks cannot read channels")


def build_transport(config: AlertingSettings) -> SlackTransport | None:
    """Bot token if set, else webhook if set, else None (alerts are logged and recorded "logged")."""
    redactor = Redactor(config.secret_values())
    if config.slack_bot_token is not None:
        return SlackBotTransport(
            config.slack_bot_token.get_secret_value(),
            config.slack_base_url,
            config.slack_timeout_seconds,
            redactor,
        )
    if config.slack_webhook_url is not None:
        return SlackWebhookTransport(
            config.slack_webhook_url.get_secret_value(), config.slack_timeout_seconds, redactor
        )
    return None
