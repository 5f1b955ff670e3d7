"""Alert delivery: dedup/cooldown decisions, retry policy and the delivery loop, without Kafka.

Flow: `AlertDeliverer.intake()` turns an anomaly into a pending `Delivery` in the state table
(synchronously, inside the agent) and wakes the loop. It decides post / fold / resolve: one
top-level message per key and incident; later windows of the incident, and anything else for
the key within the cooldown, become replies in its thread; a resolution updates that message.
`deliver_due()` (a background task) sends pending deliveries oldest first, one Slack call at a
time, and records every attempt. A failed call never blocks anything: the delivery gets a
`next_attempt_ms` and stays pending in the changelogged table, so a restart during an outage
still delivers it later.

Exactly once, honestly: Slack's chat.postMessage has no idempotency key. Before a non-idempotent
call the delivery is marked `unknown_outcome` and that mark is flushed to Kafka; a definite answer
clears it. If the process dies (or the call times out) after Slack accepted the message but
before "sent" is stored, the mark survives, and the next attempt first looks for the message
(its metadata carries the anomaly_id) in conversations.history / conversations.replies and only
posts if it is not there. What remains: (1) webhooks cannot be read back, so an unknown outcome
there is re-posted; (2) if the lookup cannot run (missing channels:history scope, channel given
by name with no ID learned yet) we post anyway; (3) a timed-out request that Slack processes
after our lookup (a slow Slack, not a dead one) is posted twice; (4) the lookup reads one page
(200 messages) of history, so in a very busy channel an old in-flight alert may be missed.
Records on alert-deliveries are sent after the table write; a crash between the two loses the
record, never the alert (the table is the truth).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from services.alerting.records import (
    Action,
    Anomaly,
    Delivery,
    OpenAlert,
    RecordStatus,
    Status,
    decode_delivery,
    decode_open_alert,
    delivery_record,
    encode_delivery,
    encode_open_alert,
)
from services.alerting.settings import AlertingSettings
from services.alerting.slack_messages import SlackMessage, alert_message, repeat_message, resolved_message
from services.alerting.slack_transport import CallResult, SlackTransport
from shared import metrics
from shared.redaction import Redactor

log = logging.getLogger(__name__)

Mode = Literal["bot", "webhook", "log"]
Verdict = Literal["ok", "retry", "permanent"]

# Slack error codes worth retrying; any other `ok: false` answer is permanent (invalid_auth,
# channel_not_found, not_in_channel, is_archived, msg_too_long, invalid_blocks, missing_scope...).
TRANSIENT_SLACK_ERRORS = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
# How far before an alert's arrival the posted-message lookup starts (clock skew with Slack).
LOOKUP_SLACK_MS = 300_000
CLEANUP_EVERY_MS = 60_000


# --- pure policy ----------------------------------------------------------------------------------


def classify(result: CallResult) -> Verdict:
    if result.ok:
        return "ok"
    if result.http_status is None or result.http_status == 429 or result.http_status >= 500:
        return "retry"
    if result.error in TRANSIENT_SLACK_ERRORS:
        return "retry"
    return "permanent"


def retry_delay_seconds(
    attempt: int, retry_after_s: float | None, settings: AlertingSettings, rand: float = 0.5
) -> float:
    """Delay after failed attempt `attempt` (1-based). Slack's Retry-After wins over the backoff.

    `rand` in [0, 1) spreads retries by +- alert_retry_jitter so that many pending alerts do not
    hit a recovering Slack in the same instant.
    """
    if retry_after_s is not None:
        return min(retry_after_s, settings.alert_retry_after_max_seconds)
    exponent = min(max(attempt - 1, 0), 30)
    base = min(settings.alert_retry_base_seconds * 2**exponent, settings.alert_retry_max_seconds)
    return base * (1 + settings.alert_retry_jitter * (2 * rand - 1))


@dataclass(frozen=True)
class IntakeDecision:
    action: Action | None  # None: nothing to deliver (a duplicate)
    parent_id: str | None = None
    reopened: bool = False
    reason: str = ""


def within_cooldown(open_alert: OpenAlert, anomaly: Anomaly, cooldown_ms: int) -> bool:
    # Event time, so a backlog replayed after an outage folds the same way it would have live.
    event_ms = anomaly.window_end if anomaly.window_end is not None else anomaly.window_start
    if event_ms is None:
        return False
    return event_ms - open_alert.opened_event_ms < cooldown_ms


def decide_alert(
    anomaly: Anomaly, existing: Delivery | None, open_alert: OpenAlert | None, cooldown_ms: int
) -> IntakeDecision:
    """post, or fold into the key's open alert: a later window of its (unresolved) incident, or
    any anomaly of the key within the cooldown (also after a resolve: a flapping key stays in one
    thread)."""
    if existing is not None:
        return IntakeDecision(None, reason="duplicate anomaly_id")
    if open_alert is None or open_alert.anomaly_id == anomaly.anomaly_id:
        return IntakeDecision("post", reason="new alert")
    if not open_alert.resolved and open_alert.incident_id == anomaly.incident:
        return IntakeDecision("fold", open_alert.anomaly_id, reason="same incident")
    if within_cooldown(open_alert, anomaly, cooldown_ms):
        return IntakeDecision(
            "fold", open_alert.anomaly_id, reopened=open_alert.resolved, reason="within cooldown"
        )
    return IntakeDecision("post", reason="new alert")


def decide_resolution(
    resolution: Anomaly, existing: Delivery | None, target: Delivery | None, open_alert: OpenAlert | None
) -> IntakeDecision:
    """Which message a resolution marks resolved.

    The detector has at most one open incident per key and resolves it on the key's first clean
    window, so a resolution of the key's open alert, of its incident, or of anything folded into
    it (a superseding incident) means the key is back to normal: its top-level message is updated.
    Otherwise the alert named by `resolves` is (a top-level one updated, a folded one replied to).
    """
    if existing is not None:
        return IntakeDecision(None, reason="duplicate anomaly_id")
    if open_alert is not None and not open_alert.resolved:
        closes_open_alert = resolution.resolves in (open_alert.anomaly_id, open_alert.incident_id) or (
            target is not None and target.parent_id == open_alert.anomaly_id
        )
        if closes_open_alert:
            return IntakeDecision("resolve", open_alert.anomaly_id, reason="resolves the key's open alert")
    return IntakeDecision("resolve", resolution.resolves, reason="resolution")


# What one delivery attempt does; `plan_step` picks it from the delivery and its parent's state.
@dataclass(frozen=True)
class Wait:
    """A parent is still pending: a thread reply needs its ts, a resolve needs its message."""


@dataclass(frozen=True)
class Finish:
    """No Slack call: recorded with this status (log mode, or folded under a webhook)."""

    status: Status
    note: str | None = None


@dataclass(frozen=True)
class Post:
    message: SlackMessage
    success_status: Status  # "sent" (top-level) or "folded" (thread reply)
    channel: str | None = None  # None: the configured channel
    thread_ts: str | None = None


@dataclass(frozen=True)
class Update:
    """Idempotent chat.update of a posted alert, then one best-effort thread reply."""

    channel: str
    ts: str
    message: SlackMessage
    reply: SlackMessage


Step = Wait | Finish | Post | Update


def plan_step(
    delivery: Delivery,
    mode: Mode,
    lookup: Callable[[str], Delivery | None],
    sql_template: str,
    query_url: str | None,
) -> Step:
    anomaly = delivery.anomaly

    def own_alert() -> Step:
        return (
            Finish("logged")
            if mode == "log"
            else Post(alert_message(anomaly, sql_template, query_url), "sent")
        )

    if delivery.action == "post":
        return own_alert()
    parent = lookup(delivery.parent_id) if delivery.parent_id else None
    if parent is not None and not parent.is_final:
        return Wait()
    if delivery.action == "fold":
        if parent is None:  # expired from the table: this repeat is an alert of its own
            return own_alert()
        if mode == "log":
            return Finish("logged")
        if mode == "bot" and parent.slack_ts:
            return Post(
                repeat_message(anomaly, reopened=delivery.reopened),
                "folded",
                channel=parent.channel,
                thread_ts=parent.slack_ts,
            )
        if mode == "webhook" and parent.status == "sent":
            return Finish("folded", "webhook: repeat within cooldown not sent")
        return own_alert()  # the parent never reached Slack: do not lose this one too
    # resolve: parent is the alert named by `resolves`
    if parent is None:
        return Finish("logged", "resolves an unknown (or expired) alert")
    if mode == "log":
        return Finish("logged")
    if parent.action == "fold":
        # A repeat resolved: say so in the thread; the top-level message stays as it is.
        thread = lookup(parent.parent_id) if parent.parent_id else None
        if mode == "bot" and thread is not None and thread.slack_ts:
            return Post(
                resolved_message(anomaly, parent.anomaly),
                "folded",
                channel=thread.channel,
                thread_ts=thread.slack_ts,
            )
        return Finish("folded", "resolution of a repeat that has no thread")
    if mode == "bot" and parent.slack_ts and parent.channel:
        return Update(
            parent.channel,
            parent.slack_ts,
            alert_message(parent.anomaly, sql_template, query_url, resolved_by=anomaly),
            resolved_message(anomaly, parent.anomaly),
        )
    if parent.status == "sent":  # posted through a webhook: a new message is all we can do
        return Post(resolved_message(anomaly, parent.anomaly), "sent")
    return Finish("logged", "the resolved alert never reached Slack")


# --- the deliverer ------------------------------------------------------------------------------------


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class AlertDeliverer:
    """Owns the two state tables' contents and the Slack calls; faust-agnostic (dicts work).

    `deliveries`: anomaly_id -> encoded `Delivery`; `open_alerts`: "key_type:key" -> `OpenAlert`.
    Only `intake` creates deliveries and writes open alerts; only the delivery loop changes a
    delivery after that. Both run on one event loop, so no write races a read-modify-write.
    """

    def __init__(
        self,
        settings: AlertingSettings,
        deliveries: MutableMapping[str, bytes],
        open_alerts: MutableMapping[str, bytes],
        transport: SlackTransport | None,
        emit: Callable[[dict[str, Any]], Awaitable[None]],
        *,
        persist: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.deliveries = deliveries
        self.open_alerts = open_alerts
        self.transport = transport
        self.mode: Mode = "log" if transport is None else ("bot" if transport.threads else "webhook")
        self.redact = Redactor(settings.secret_values())
        self._emit = emit
        self._persist = persist
        self._clock = clock
        self._rand = rand
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        # After a 429 every call waits: Slack's limits are per app and method, not per alert.
        self._not_before_ms = 0
        self._channel_id: str | None = None
        self._last_cleanup_ms = 0
        self._unreadable: set[str] = set()
        # Taken in -> Slack answered OK, of the latest deliveries (ms): what our own process adds,
        # with the successful Slack call's round trip in it (and any retry's wait).
        self.in_process_ms: deque[int] = deque(maxlen=1000)
        # The same deliveries without that round trip: the time that is alerting's own (waking up,
        # the state writes, the in-flight mark put on the broker, the record), not Slack's answer.
        self.own_ms: deque[int] = deque(maxlen=1000)

    # --- table access ---

    def get(self, anomaly_id: str) -> Delivery | None:
        raw = self.deliveries.get(anomaly_id)
        return decode_delivery(raw) if raw is not None else None

    def _save(self, delivery: Delivery) -> None:
        self.deliveries[delivery.anomaly_id] = encode_delivery(delivery)

    def _open_alert(self, key_id: str) -> OpenAlert | None:
        raw = self.open_alerts.get(key_id)
        return decode_open_alert(raw) if raw is not None else None

    def _all(self) -> Iterable[Delivery]:
        for anomaly_id, raw in list(self.deliveries.items()):
            if raw is None:
                continue
            try:
                yield decode_delivery(raw)
            except Exception as exc:  # one unreadable value must not stop every other alert
                if anomaly_id not in self._unreadable:
                    self._unreadable.add(anomaly_id)
                    log.error("skipping unreadable delivery state %r: %s", anomaly_id, type(exc).__name__)

    # --- intake (synchronous: runs inside the agent, between awaits) ---

    def intake(self, anomaly: Anomaly) -> IntakeDecision:
        existing = self.get(anomaly.anomaly_id)
        open_alert = self._open_alert(anomaly.key_id)
        if anomaly.is_resolution:
            target = self.get(anomaly.resolves) if anomaly.resolves else None
            decision = decide_resolution(anomaly, existing, target, open_alert)
        else:
            decision = decide_alert(anomaly, existing, open_alert, self.settings.alert_cooldown_ms)
        if decision.action is None:
            log.info("alert %s: %s, ignored", anomaly.anomaly_id, decision.reason)
            return decision
        now = self._clock()
        self._save(Delivery(anomaly, decision.action, decision.parent_id, now, reopened=decision.reopened))
        if decision.action == "post":
            opened_at = anomaly.window_end if anomaly.window_end is not None else now
            opened = OpenAlert(anomaly.anomaly_id, opened_at, now, incident_id=anomaly.incident)
            self.open_alerts[anomaly.key_id] = encode_open_alert(opened)
        elif open_alert is not None and decision.parent_id == open_alert.anomaly_id:
            if decision.action == "resolve":
                updated = replace(open_alert, resolved=True)
            else:  # a fold (re-)opens it and makes its incident the key's current one (supersedes)
                updated = replace(open_alert, resolved=False, incident_id=anomaly.incident)
            if updated != open_alert:
                self.open_alerts[anomaly.key_id] = encode_open_alert(updated)
        log.info("alert %s (%s %s): %s", anomaly.anomaly_id, anomaly.kind, anomaly.key_id, decision.reason)
        self.wake()
        return decision

    def wake(self) -> None:
        self._wakeup.set()

    # --- the delivery loop ---

    async def run(self, is_ready: Callable[[], bool] = lambda: True) -> None:
        """Deliver forever; `is_ready` holds it while the tables recover or rebalance."""
        while True:
            delay = self.settings.alert_delivery_poll_seconds
            # Cleared before the pass, not before the sleep: a wake() during the pass is not lost.
            self._wakeup.clear()
            try:
                if is_ready():
                    next_due = await self.deliver_due()
                    if next_due is not None:
                        delay = min(delay, next_due)
                    self.forget_expired()
            except Exception as exc:  # keep the loop alive; the delivery stays pending
                log.error("alert delivery pass failed: %s", self.redact.exception_text(exc))
            await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._wakeup.wait()
        except TimeoutError:
            pass

    async def deliver_due(self) -> float | None:
        """Attempt every due delivery, oldest first. Seconds until the next is due; None: none pending."""
        async with self._lock:
            pending = sorted(
                (d for d in self._all() if not d.is_final), key=lambda d: (d.created_ms, d.anomaly_id)
            )
            next_due: float | None = None
            for queued in pending:
                now = self._clock()
                if now < self._not_before_ms:
                    return (self._not_before_ms - now) / 1000
                delivery = self.get(queued.anomaly_id)  # fresh: an earlier step may have been its parent
                if delivery is None or delivery.is_final:
                    continue
                if delivery.next_attempt_ms > now:
                    wait_s = (delivery.next_attempt_ms - now) / 1000
                    next_due = wait_s if next_due is None else min(next_due, wait_s)
                    continue
                await self._attempt(delivery)
                after = self.get(delivery.anomaly_id)
                if after is not None and not after.is_final and after.next_attempt_ms > now:
                    wait_s = max(0.0, (after.next_attempt_ms - self._clock()) / 1000)
                    next_due = wait_s if next_due is None else min(next_due, wait_s)
            if next_due is None and any(not d.is_final for d in self._all()):
                # Only deliveries waiting for a parent remain; the parent's outcome wakes them.
                next_due = self.settings.alert_delivery_poll_seconds
            return next_due

    async def drain(self, timeout_s: float) -> bool:
        """Deliver until nothing is pending (True) or `timeout_s` passes (False); for tests and tools."""
        deadline = time.monotonic() + timeout_s
        while True:
            next_due = await self.deliver_due()
            if next_due is None:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(max(0.01, min(next_due, remaining)))

    async def _attempt(self, delivery: Delivery) -> None:
        now = self._clock()
        give_up_ms = self.settings.alert_give_up_after_ms
        if give_up_ms and now - delivery.created_ms >= give_up_ms:
            reason = f"gave up after {delivery.attempts} attempts: {delivery.last_error or 'waiting'}"
            await self._finish(delivery, "failed_permanent", error=self.redact.error_text(reason))
            return
        step = plan_step(
            delivery,
            self.mode,
            self.get,
            self.settings.alert_sql_template,
            self.settings.alert_query_url,
        )
        try:
            if isinstance(step, Wait):
                return
            if isinstance(step, Finish):
                await self._finish_without_slack(delivery, step)
            elif isinstance(step, Post):
                await self._post(delivery, step)
            else:
                await self._update(delivery, step)
        except Exception as exc:  # a bug or an unexpected library error: retry, never crash the loop
            current = self.get(delivery.anomaly_id) or delivery
            failure = CallResult(ok=False, error=self.redact.exception_text(exc), maybe_delivered=True)
            await self._retry(current, failure)

    async def _finish_without_slack(self, delivery: Delivery, step: Finish) -> None:
        if step.status == "logged":
            message = self._describe(delivery)
            log.warning("ALERT (no Slack delivery) %s%s", message, f" [{step.note}]" if step.note else "")
        await self._finish(replace(delivery, attempts=delivery.attempts + 1), step.status, note=step.note)

    def _describe(self, delivery: Delivery) -> str:
        a = delivery.anomaly
        if delivery.action == "resolve":
            return f"RESOLVED {a.key_type} {a.key}: alert {a.resolves} ({a.anomaly_id})"
        text = alert_message(a, self.settings.alert_sql_template, None).text
        return f"{text} ({delivery.action}, anomaly_id {a.anomaly_id})"

    async def _post(self, delivery: Delivery, step: Post) -> None:
        assert self.transport is not None
        channel = step.channel or self.settings.slack_channel
        if delivery.unknown_outcome and self.transport.threads:
            found = await self._find_posted(delivery, step, channel)
            if found is None:
                return  # the lookup itself must be retried; already scheduled
            if found.ts:
                log.warning(
                    "alert %s was already posted (ts %s); not posting again", delivery.anomaly_id, found.ts
                )
                posted = replace(
                    delivery, attempts=delivery.attempts + 1, slack_ts=found.ts, channel=found.channel
                )
                await self._finish(posted, step.success_status, http_status=found.http_status)
                return
        # Intent first: if we die during the call, the restart knows to look before re-posting.
        in_flight = replace(delivery, attempts=delivery.attempts + 1, unknown_outcome=True)
        await self._mark_in_flight(in_flight)
        called_at = self._clock()
        result = await self.transport.post(channel, step.message, thread_ts=step.thread_ts)
        call_ms = self._clock() - called_at
        if classify(result) == "ok":
            if step.thread_ts is None and result.channel:
                self._channel_id = result.channel
            sent = replace(in_flight, slack_ts=result.ts, channel=result.channel or step.channel)
            await self._finish(sent, step.success_status, http_status=result.http_status, call_ms=call_ms)
        else:
            await self._failed(in_flight, result)

    async def _find_posted(self, delivery: Delivery, step: Post, channel: str) -> CallResult | None:
        """The lookup before re-posting; None if it failed transiently (a retry is then scheduled)."""
        assert self.transport is not None
        lookup_channel = step.channel or self._known_channel_id() or channel
        oldest_s = max(0, delivery.created_ms - LOOKUP_SLACK_MS) / 1000
        found = await self.transport.find_posted(
            lookup_channel, delivery.anomaly_id, oldest_s, thread_ts=step.thread_ts
        )
        verdict = classify(found)
        if verdict == "retry":
            checking = replace(delivery, attempts=delivery.attempts + 1)
            # Says nothing about the post itself: the outcome stays unknown (maybe_delivered).
            lookup_failure = replace(
                found, error=f"lookup before re-post: {found.error}", maybe_delivered=True
            )
            await self._retry(checking, lookup_failure)
            return None
        if verdict == "permanent":
            log.warning(
                "alert %s: cannot check whether it was already posted (%s; give SLACK_CHANNEL as a "
                "channel ID and grant channels:history); posting, which may duplicate it",
                delivery.anomaly_id,
                found.error,
            )
            return CallResult(ok=True)
        return found

    def _known_channel_id(self) -> str | None:
        if self._channel_id is None:
            self._channel_id = next(
                (d.channel for d in self._all() if d.channel and d.action == "post" and d.slack_ts), None
            )
        return self._channel_id

    async def _update(self, delivery: Delivery, step: Update) -> None:
        assert self.transport is not None
        attempt = replace(delivery, attempts=delivery.attempts + 1)
        # chat.update is idempotent: no in-flight mark needed, a repeat only rewrites the same text.
        called_at = self._clock()
        result = await self.transport.update(step.channel, step.ts, step.message)
        call_ms = self._clock() - called_at
        if classify(result) != "ok":
            await self._failed(attempt, result)
            return
        updated = replace(attempt, slack_ts=step.ts, channel=step.channel)
        await self._finish(updated, "updated", http_status=result.http_status, call_ms=call_ms)
        # One try, never retried: a missing "resolved" reply is better than a pile of them.
        reply = await self.transport.post(step.channel, step.reply, thread_ts=step.ts)
        if not reply.ok:
            log.warning("alert %s: resolved-reply not posted: %s", delivery.anomaly_id, reply.error)

    async def _mark_in_flight(self, delivery: Delivery) -> None:
        self._save(delivery)
        if self._persist is None:
            return
        try:
            await self._persist()
        except Exception as exc:  # Kafka trouble must not stop alerts; the window just widens
            log.warning(
                "could not flush the in-flight mark before sending: %s", self.redact.exception_text(exc)
            )

    async def _failed(self, delivery: Delivery, result: CallResult) -> None:
        if classify(result) == "permanent":
            log.error(
                "alert %s failed permanently: HTTP %s %s",
                delivery.anomaly_id,
                result.http_status,
                result.error,
            )
            await self._finish(
                replace(delivery, unknown_outcome=False),
                "failed_permanent",
                http_status=result.http_status,
                error=result.error,
            )
        else:
            await self._retry(delivery, result)

    async def _retry(self, delivery: Delivery, result: CallResult) -> None:
        now = self._clock()
        delay_s = retry_delay_seconds(delivery.attempts, result.retry_after_s, self.settings, self._rand())
        if result.retry_after_s is not None or result.http_status == 429:
            self._not_before_ms = max(self._not_before_ms, now + int(delay_s * 1000))
        error = self.redact.error_text(result.error or "") or None
        waiting = replace(
            delivery,
            next_attempt_ms=now + int(delay_s * 1000),
            # A 429 or a refused connection is a definite "not posted"; a timeout or 5xx is not.
            unknown_outcome=delivery.unknown_outcome and result.maybe_delivered,
            last_error=error,
            last_http_status=result.http_status,
        )
        self._save(waiting)
        log.warning(
            "alert %s attempt %d: HTTP %s %s; retrying in %.1fs",
            delivery.anomaly_id,
            delivery.attempts,
            result.http_status,
            error,
            delay_s,
        )
        await self._record(waiting, "retry", now, http_status=result.http_status, error=error)

    async def _finish(
        self,
        delivery: Delivery,
        status: Status,
        *,
        http_status: int | None = None,
        error: str | None = None,
        note: str | None = None,
        call_ms: int | None = None,
    ) -> None:
        """`call_ms`: how long the Slack call that succeeded took, when there was one."""
        now = self._clock()
        final = replace(
            delivery,
            status=status,
            unknown_outcome=False,
            finished_ms=now,
            last_error=error,
            last_http_status=http_status,
        )
        self._save(final)
        if status in ("sent", "updated", "folded"):
            self.in_process_ms.append(now - delivery.created_ms)
            metrics.alert_in_process_seconds.observe((now - delivery.created_ms) / 1000)
            if call_ms is not None:
                self.own_ms.append(now - delivery.created_ms - call_ms)
        if status != "logged":  # logged ones were just logged in full
            # Timed: a slow delivery shows whether Slack's answer or our own part took the time.
            timing = f", {now - delivery.created_ms} ms after intake"
            if call_ms is not None:
                timing += f", {call_ms} ms of it in the Slack call"
            log.info(
                "alert %s: %s (ts %s)%s%s",
                final.anomaly_id,
                status,
                final.slack_ts,
                timing,
                f" [{note}]" if note else "",
            )
        await self._record(final, status, now, http_status=http_status, error=error)  # type: ignore[arg-type]
        self.wake()  # deliveries waiting for this one may go now

    async def _record(
        self,
        delivery: Delivery,
        status: RecordStatus,
        at_ms: int,
        *,
        http_status: int | None,
        error: str | None,
    ) -> None:
        record = delivery_record(delivery, status, at_ms, http_status=http_status, error=error)
        try:
            await self._emit(record)
        except Exception as exc:  # the table holds the truth; a lost record must not lose the alert
            log.error(
                "could not record delivery of %s: %s", delivery.anomaly_id, self.redact.exception_text(exc)
            )

    # --- housekeeping and views ---

    def forget_expired(self) -> int:
        """Drop finished deliveries (and their open alerts) older than alert_retention_ms."""
        now = self._clock()
        if now - self._last_cleanup_ms < CLEANUP_EVERY_MS:
            return 0
        self._last_cleanup_ms = now
        horizon = now - self.settings.alert_retention_ms
        expired = [d.anomaly_id for d in self._all() if d.is_final and (d.finished_ms or 0) < horizon]
        for anomaly_id in expired:
            del self.deliveries[anomaly_id]
        for key_id, raw in list(self.open_alerts.items()):
            if raw is not None and decode_open_alert(raw).opened_wall_ms < horizon:
                del self.open_alerts[key_id]
        return len(expired)

    def pending(self) -> list[dict[str, Any]]:
        """Undelivered alerts, oldest first (what GET /alerts/pending shows); holds no secrets."""
        rows = sorted((d for d in self._all() if not d.is_final), key=lambda d: (d.created_ms, d.anomaly_id))
        return [
            {
                "anomaly_id": d.anomaly_id,
                "kind": d.anomaly.kind,
                "key_type": d.anomaly.key_type,
                "key": d.anomaly.key,
                "severity": d.anomaly.severity,
                "action": d.action,
                "parent_id": d.parent_id,
                "attempts": d.attempts,
                "next_attempt_ms": d.next_attempt_ms,
                "unknown_outcome": d.unknown_outcome,
                "last_http_status": d.last_http_status,
                "last_error": d.last_error,
                "created_ms": d.created_ms,
            }
            for d in rows
        ]
