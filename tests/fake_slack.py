"""A local stand-in for the Slack Web API and an incoming webhook, with fault injection.

Point slack-sdk at it with `base_url=fake.base_url` (".../api/") or `fake.webhook_url`. It keeps
channels and messages like Slack does (so conversations.history finds what chat.postMessage
posted), records every request, and can be told to answer the next N calls with 429 +
Retry-After, with 500, with a Slack error code, or to hang past the client's timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

TEST_TOKEN = "xoxb-test-0000-fake-token-for-tests"
WEBHOOK_PATH = "/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"
CHANNEL_ID = "C0ALERTS"
CHANNEL_NAME = "ad-alerts"


@dataclass
class RecordedRequest:
    api: str  # "chat.postMessage", ..., or "webhook"
    http_method: str
    body: dict[str, Any]
    authorized: bool
    at: float  # time.monotonic() when it arrived
    status: int | None = None  # HTTP status answered (None: still hanging / dropped)


@dataclass
class _Fault:
    kind: str  # "status" | "error" | "hang"
    remaining: int
    apis: frozenset[str] | None  # None: any api
    status: int = 500
    retry_after: float | None = None
    error: str = ""
    hang_seconds: float = 0.0
    then_process: bool = False


@dataclass
class FakeSlack:
    token: str = TEST_TOKEN
    channels: dict[str, str] = field(default_factory=lambda: {CHANNEL_ID: CHANNEL_NAME})
    requests: list[RecordedRequest] = field(default_factory=list)
    # Every stored message (top-level and replies), like a channel's full history.
    messages: list[dict[str, Any]] = field(default_factory=list)
    _faults: deque[_Fault] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    _port: int = 0
    _last_ts: float = 0.0
    _hanging: set[asyncio.Task[Any]] = field(default_factory=set)

    # --- lifecycle ---

    async def start(self) -> FakeSlack:
        app = web.Application()
        app.router.add_route("*", "/api/{api}", self._api)
        app.router.add_post("/services/{path:.*}", self._webhook)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        for task in list(self._hanging):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/api/"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self._port}{WEBHOOK_PATH}"

    # --- fault injection (each applies to the next `n` matching calls) ---

    def fail_next(
        self, n: int, status: int = 500, *, retry_after: float | None = None, apis: set[str] | None = None
    ) -> None:
        """HTTP `status`; 429 answers {"ok": false, "error": "ratelimited"} with Retry-After."""
        self._faults.append(_Fault("status", n, _apis(apis), status=status, retry_after=retry_after))

    def rate_limit_next(self, n: int, retry_after: float = 1.0, apis: set[str] | None = None) -> None:
        self.fail_next(n, 429, retry_after=retry_after, apis=apis)

    def error_next(self, n: int, error: str, apis: set[str] | None = None) -> None:
        """HTTP 200 with {"ok": false, "error": error} (e.g. channel_not_found)."""
        self._faults.append(_Fault("error", n, _apis(apis), error=error))

    def hang_next(
        self, n: int, seconds: float, *, then_process: bool = False, apis: set[str] | None = None
    ) -> None:
        """Sleep `seconds` before answering. then_process: afterwards do the call anyway (Slack
        accepted it but the client had given up); otherwise drop it with a 503."""
        self._faults.append(_Fault("hang", n, _apis(apis), hang_seconds=seconds, then_process=then_process))

    # --- assertions helpers ---

    def calls(self, api: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.api == api]

    def top_level_messages(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("thread_ts") in (None, m["ts"])]

    def replies(self, thread_ts: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("thread_ts") == thread_ts and m["ts"] != thread_ts]

    # --- handlers ---

    def _take_fault(self, api: str) -> _Fault | None:
        for fault in self._faults:
            if fault.apis is None or api in fault.apis:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    async def _api(self, request: web.Request) -> web.StreamResponse:
        api = request.match_info["api"]
        body = await _parse_body(request)
        authorized = request.headers.get("Authorization") == f"Bearer {self.token}"
        recorded = RecordedRequest(api, request.method, body, authorized, time.monotonic())
        self.requests.append(recorded)
        response = await self._faulted(api, recorded)
        if response is None:
            if not authorized:
                response = _slack(False, error="invalid_auth")
            else:
                handler = {
                    "chat.postMessage": self._post_message,
                    "chat.update": self._update,
                    "conversations.history": self._history,
                    "conversations.replies": self._replies,
                }.get(api)
                response = handler(body) if handler else _slack(False, error="unknown_method")
        recorded.status = response.status
        return response

    async def _faulted(self, api: str, recorded: RecordedRequest) -> web.StreamResponse | None:
        fault = self._take_fault(api)
        if fault is None:
            return None
        if fault.kind == "status":
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            if fault.status == 429:
                if api == "webhook":
                    return web.Response(status=429, text="rate_limited", headers=headers)
                return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers=headers)
            return web.Response(status=fault.status, text="Internal Server Error", headers=headers)
        if fault.kind == "error":
            if api == "webhook":
                return web.Response(status=404, text=fault.error)
            return _slack(False, error=fault.error)
        task = asyncio.current_task()
        assert task is not None
        self._hanging.add(task)
        try:
            await asyncio.sleep(fault.hang_seconds)
        finally:
            self._hanging.discard(task)
        if fault.then_process:
            return None
        return web.Response(status=503, text="dropped after hanging")

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        body = await _parse_body(request)
        known = "/services/" + request.match_info["path"] == WEBHOOK_PATH
        recorded = RecordedRequest("webhook", request.method, body, known, time.monotonic())
        self.requests.append(recorded)
        response = await self._faulted("webhook", recorded)
        if response is None:
            if not known:
                response = web.Response(status=404, text="no_service")
            else:
                self._store({"channel": "webhook", **_message_fields(body)})
                response = web.Response(text="ok")
        recorded.status = response.status
        return response

    def _channel_id(self, channel: Any, *, by_name: bool) -> str | None:
        if not isinstance(channel, str):
            return None
        if channel in self.channels:
            return channel
        if by_name:  # chat.* accept names; conversations.* want IDs, as on Slack
            name = channel.lstrip("#")
            return next((cid for cid, cname in self.channels.items() if cname == name), None)
        return None

    def _next_ts(self) -> str:
        self._last_ts = max(time.time(), self._last_ts + 0.000001)
        return f"{self._last_ts:.6f}"

    def _store(self, message: dict[str, Any]) -> dict[str, Any]:
        stored = {"type": "message", "ts": self._next_ts(), **message}
        self.messages.append(stored)
        return stored

    def _find(self, channel: str, ts: Any) -> dict[str, Any] | None:
        return next((m for m in self.messages if m["channel"] == channel and m["ts"] == ts), None)

    def _post_message(self, body: dict[str, Any]) -> web.Response:
        channel = self._channel_id(body.get("channel"), by_name=True)
        if channel is None:
            return _slack(False, error="channel_not_found")
        if not (body.get("text") or body.get("attachments") or body.get("blocks")):
            return _slack(False, error="no_text")
        thread_ts = body.get("thread_ts")
        if thread_ts is not None and self._find(channel, thread_ts) is None:
            return _slack(False, error="thread_not_found")
        stored = self._store({"channel": channel, **_message_fields(body), "thread_ts": thread_ts})
        return _slack(True, channel=channel, ts=stored["ts"], message=_public(stored, with_metadata=True))

    def _update(self, body: dict[str, Any]) -> web.Response:
        channel = self._channel_id(body.get("channel"), by_name=True)
        if channel is None:
            return _slack(False, error="channel_not_found")
        message = self._find(channel, body.get("ts"))
        if message is None:
            return _slack(False, error="message_not_found")
        message.update({k: v for k, v in _message_fields(body).items() if v is not None})
        message["edited"] = {"ts": self._next_ts()}
        return _slack(True, channel=channel, ts=message["ts"], text=message.get("text"))

    def _history(self, body: dict[str, Any]) -> web.Response:
        channel = self._channel_id(body.get("channel"), by_name=False)
        if channel is None:
            return _slack(False, error="channel_not_found")
        oldest = float(body.get("oldest") or 0)
        limit = int(body.get("limit") or 100)
        with_metadata = _truthy(body.get("include_all_metadata"))
        found = [
            _public(m, with_metadata=with_metadata)
            for m in reversed(self.messages)
            if m["channel"] == channel and m.get("thread_ts") in (None, m["ts"]) and float(m["ts"]) > oldest
        ]
        return _slack(True, messages=found[:limit], has_more=len(found) > limit)

    def _replies(self, body: dict[str, Any]) -> web.Response:
        channel = self._channel_id(body.get("channel"), by_name=False)
        if channel is None:
            return _slack(False, error="channel_not_found")
        parent = self._find(channel, body.get("ts"))
        if parent is None:
            return _slack(False, error="thread_not_found")
        with_metadata = _truthy(body.get("include_all_metadata"))
        thread = [parent, *self.replies(parent["ts"])]
        return _slack(True, messages=[_public(m, with_metadata=with_metadata) for m in thread])


def _apis(apis: set[str] | None) -> frozenset[str] | None:
    return frozenset(apis) if apis is not None else None


def _truthy(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True")


def _slack(ok: bool, **fields: Any) -> web.Response:
    return web.json_response({"ok": ok, **fields})


def _message_fields(body: dict[str, Any]) -> dict[str, Any]:
    fields = {k: body.get(k) for k in ("text", "attachments", "blocks", "metadata")}
    for key in ("attachments", "blocks", "metadata"):  # form-encoded bodies carry JSON strings
        if isinstance(fields[key], str):
            fields[key] = json.loads(fields[key])
    return fields


def _public(message: dict[str, Any], *, with_metadata: bool) -> dict[str, Any]:
    shown = {k: v for k, v in message.items() if v is not None and k != "channel"}
    if not with_metadata:
        shown.pop("metadata", None)
    return shown


async def _parse_body(request: web.Request) -> dict[str, Any]:
    body: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        raw = await request.read()
        if request.content_type == "application/json" or raw[:1] in (b"{", b"["):
            parsed = json.loads(raw or b"{}")
            if isinstance(parsed, dict):
                body.update(parsed)
        else:
            body.update(parse_qsl(raw.decode()))
    return body
