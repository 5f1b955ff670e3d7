"""Alert delivery against a local fake Slack (no Kafka): one message per anomaly, folding,
resolution, retries (429 / 500 / hang), permanent errors, restarts, and no secret in any output."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest

from services.alerting.records import Anomaly, InvalidAnomaly, decode_delivery, encode_delivery, parse_anomaly
from services.alerting.settings import AlertingSettings
from services.alerting.slack_delivery import (
    AlertDeliverer,
    Post,
    Wait,
    classify,
    decide_alert,
    plan_step,
    retry_delay_seconds,
)
from services.alerting.slack_messages import METADATA_EVENT_TYPE, SEVERITY_COLORS
from services.alerting.slack_transport import CallResult, build_transport
from shared.redaction import Redactor
from tests.fake_slack import CHANNEL_ID, TEST_TOKEN, WEBHOOK_PATH, FakeSlack

T0 = 1_700_000_000_000  # window_end of the first anomaly (event time, ms)
MINUTE = 60_000


def make_settings(**overrides: Any) -> AlertingSettings:
    values: dict[str, Any] = {
        "slack_bot_token": None,
        "slack_webhook_url": None,
        "slack_channel": CHANNEL_ID,
        "slack_timeout_seconds": 0.3,
        "alert_retry_base_seconds": 0.05,
        "alert_retry_max_seconds": 0.2,
        "alert_retry_jitter": 0.0,
        "alert_delivery_poll_seconds": 0.05,
        "alert_cooldown_ms": 15 * MINUTE,
        "alert_give_up_after_ms": 0,
    }
    values.update(overrides)
    return AlertingSettings(_env_file=None, **values)  # type: ignore[call-arg]


def anomaly(
    anomaly_id: str = "a1",
    key: str = "42",
    window_end: int = T0,
    kind: str = "ctr_high",
    severity: str = "warning",
) -> Anomaly:
    return parse_anomaly(
        {
            "anomaly_id": anomaly_id,
            "kind": kind,
            "key_type": "campaign",
            "key": key,
            "window_start": window_end - MINUTE,
            "window_end": window_end,
            "observed": 0.083,
            "expected": 0.031,
            "score": 5.2,
            "direction": "up",
            "severity": severity,
        }
    )


def resolution(anomaly_id: str, resolves: str, key: str = "42", window_end: int = T0) -> Anomaly:
    return parse_anomaly(
        orjson.dumps(
            {
                "anomaly_id": anomaly_id,
                "kind": "resolved",
                "resolves": resolves,
                "key_type": "campaign",
                "key": key,
                "window_start": window_end - MINUTE,
                "window_end": window_end,
            }
        )
    )


@dataclass
class Harness:
    """A deliverer over plain dicts (standing in for the changelogged tables) + its records."""

    settings: AlertingSettings
    deliveries: dict[str, bytes]
    open_alerts: dict[str, bytes]
    records: list[dict[str, Any]]
    deliverer: AlertDeliverer

    def statuses(self, anomaly_id: str | None = None) -> list[str]:
        return [r["status"] for r in self.records if anomaly_id in (None, r["anomaly_id"])]

    def delivery(self, anomaly_id: str) -> Any:
        return decode_delivery(self.deliveries[anomaly_id])

    def restarted(self) -> Harness:
        """A new process: fresh deliverer and transport over the same (recovered) table contents."""
        return make_harness(self.settings, self.deliveries, self.open_alerts, self.records)


def make_harness(
    settings: AlertingSettings,
    deliveries: dict[str, bytes] | None = None,
    open_alerts: dict[str, bytes] | None = None,
    records: list[dict[str, Any]] | None = None,
) -> Harness:
    deliveries = {} if deliveries is None else deliveries
    open_alerts = {} if open_alerts is None else open_alerts
    records = [] if records is None else records

    async def emit(record: dict[str, Any]) -> None:
        # As the agent does: the record must serialize with orjson.
        records.append(orjson.loads(orjson.dumps(record)))

    deliverer = AlertDeliverer(
        settings, deliveries, open_alerts, build_transport(settings), emit, rand=lambda: 0.5
    )
    return Harness(settings, deliveries, open_alerts, records, deliverer)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    server = await FakeSlack().start()
    yield server
    await server.stop()


@pytest.fixture
def bot(fake: FakeSlack) -> Harness:
    return make_harness(make_settings(slack_bot_token=TEST_TOKEN, slack_base_url=fake.base_url))


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test: at DEBUG everywhere, no log record may contain the token or the webhook path."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert TEST_TOKEN not in text, record
        assert WEBHOOK_PATH not in text, record


def assert_no_secrets(harness: Harness) -> None:
    dumped = [orjson.dumps(r).decode() for r in harness.records]
    dumped += [v.decode() for v in harness.deliveries.values()]
    dumped += [orjson.dumps(harness.deliverer.pending()).decode()]
    for text in dumped:
        assert TEST_TOKEN not in text
        assert WEBHOOK_PATH not in text


# --- pure policy ----------------------------------------------------------------------------------


def test_retry_delay_is_exponential_capped_and_retry_after_wins() -> None:
    settings = make_settings(alert_retry_base_seconds=1.0, alert_retry_max_seconds=10.0)
    assert [retry_delay_seconds(n, None, settings) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]
    assert retry_delay_seconds(1, 7.0, settings) == 7.0
    assert retry_delay_seconds(1, 10**9, settings) == settings.alert_retry_after_max_seconds
    jittery = make_settings(
        alert_retry_base_seconds=1.0, alert_retry_max_seconds=10.0, alert_retry_jitter=0.1
    )
    assert retry_delay_seconds(1, None, jittery, rand=0.0) == pytest.approx(0.9)
    assert retry_delay_seconds(1, None, jittery, rand=0.999) == pytest.approx(1.1, abs=1e-3)


def test_classify() -> None:
    assert classify(CallResult(ok=True, http_status=200)) == "ok"
    assert classify(CallResult(ok=False, http_status=429, error="ratelimited")) == "retry"
    assert classify(CallResult(ok=False, http_status=503)) == "retry"
    assert classify(CallResult(ok=False, error="TimeoutError")) == "retry"
    assert classify(CallResult(ok=False, http_status=200, error="internal_error")) == "retry"
    assert classify(CallResult(ok=False, http_status=200, error="invalid_auth")) == "permanent"
    assert classify(CallResult(ok=False, http_status=404, error="no_service")) == "permanent"


def test_cooldown_decision() -> None:
    first = anomaly("a1", window_end=T0)
    harness = make_harness(make_settings())
    harness.deliverer.intake(first)
    open_alert = harness.deliverer._open_alert(first.key_id)
    assert open_alert is not None
    cooldown = 15 * MINUTE
    assert (
        decide_alert(anomaly("a2", window_end=T0 + 14 * MINUTE), None, open_alert, cooldown).action == "fold"
    )
    assert (
        decide_alert(anomaly("a3", window_end=T0 + 15 * MINUTE), None, open_alert, cooldown).action == "post"
    )
    assert decide_alert(first, harness.delivery("a1"), open_alert, cooldown).action is None


def test_repeat_waits_for_its_pending_parent() -> None:
    harness = make_harness(make_settings())
    harness.deliverer.intake(anomaly("a1"))
    harness.deliverer.intake(anomaly("a2", window_end=T0 + MINUTE))
    fold = harness.delivery("a2")
    assert fold.action == "fold" and fold.parent_id == "a1"
    assert isinstance(plan_step(fold, "bot", harness.deliverer.get, "", None), Wait)
    assert harness.delivery("a1").status == "pending"
    sent_parent = replace(harness.delivery("a1"), status="sent", slack_ts="1.0", channel=CHANNEL_ID)
    harness.deliveries["a1"] = encode_delivery(sent_parent)
    step = plan_step(fold, "bot", harness.deliverer.get, "", None)
    assert isinstance(step, Post) and step.thread_ts == "1.0" and step.channel == CHANNEL_ID


def test_redactor_masks_configured_and_token_shaped_secrets() -> None:
    redact = Redactor([TEST_TOKEN, "http://hooks.example/services/T1/B2/SECRET"])
    assert TEST_TOKEN not in redact(f"Authorization: Bearer {TEST_TOKEN}")
    assert "SECRET" not in redact("POST http://hooks.example/services/T1/B2/SECRET failed")
    assert "xoxp-" not in redact("leaked xoxp-1234-5678-abcdef")
    error = redact.exception_text(
        RuntimeError(f"bad url https://hooks.slack.com/services/T9/B9/zz {TEST_TOKEN}")
    )
    assert error.startswith("RuntimeError: ") and "zz" not in error and TEST_TOKEN not in error


# --- delivery against the fake Slack ----------------------------------------------------------------


async def test_one_message_per_anomaly_with_block_kit(fake: FakeSlack, bot: Harness) -> None:
    bot.deliverer.intake(anomaly("a1", severity="critical"))
    assert await bot.deliverer.drain(5)

    [call] = fake.calls("chat.postMessage")
    assert call.authorized
    [message] = fake.top_level_messages()
    assert "CRITICAL" in message["text"] and "8.300%" in message["text"] and "3.100%" in message["text"]
    [attachment] = message["attachments"]
    assert attachment["color"] == SEVERITY_COLORS["critical"]
    blocks_text = orjson.dumps(attachment["blocks"]).decode()
    assert "SELECT" in blocks_text and "campaign" in blocks_text and "Observed" in blocks_text
    assert message["metadata"] == {"event_type": METADATA_EVENT_TYPE, "event_payload": {"anomaly_id": "a1"}}

    delivery = bot.delivery("a1")
    assert (delivery.status, delivery.slack_ts, delivery.channel) == ("sent", message["ts"], CHANNEL_ID)
    assert bot.records == [
        {
            "anomaly_id": "a1",
            "attempt": 1,
            "status": "sent",
            "http_status": 200,
            "error": None,
            "slack_ts": message["ts"],
            "channel": CHANNEL_ID,
            "at_ms": bot.records[0]["at_ms"],
        }
    ]
    assert bot.deliverer.pending() == []


async def test_channel_given_by_name(fake: FakeSlack) -> None:
    harness = make_harness(
        make_settings(slack_bot_token=TEST_TOKEN, slack_base_url=fake.base_url, slack_channel="#ad-alerts")
    )
    harness.deliverer.intake(anomaly("a1"))
    assert await harness.deliverer.drain(5)
    assert harness.delivery("a1").channel == CHANNEL_ID  # Slack answers with the ID; updates use it


async def test_repeated_anomaly_id_is_sent_once_even_after_restart(fake: FakeSlack, bot: Harness) -> None:
    assert bot.deliverer.intake(anomaly("a1")).action == "post"
    assert bot.deliverer.intake(anomaly("a1")).action is None  # before delivery
    assert await bot.deliverer.drain(5)
    assert bot.deliverer.intake(anomaly("a1")).action is None  # after delivery

    restarted = bot.restarted()
    assert restarted.deliverer.intake(anomaly("a1")).action is None
    assert await restarted.deliverer.drain(5)
    assert len(fake.calls("chat.postMessage")) == 1
    assert bot.statuses() == ["sent"]


async def test_cooldown_folds_repeats_into_a_thread(fake: FakeSlack, bot: Harness) -> None:
    bot.deliverer.intake(anomaly("a1", window_end=T0))
    bot.deliverer.intake(anomaly("a2", window_end=T0 + 5 * MINUTE, severity="critical"))
    bot.deliverer.intake(anomaly("other", key="7", window_end=T0 + 5 * MINUTE))  # another key: own alert
    assert await bot.deliverer.drain(5)

    parent_ts = bot.delivery("a1").slack_ts
    [reply] = fake.replies(parent_ts)
    assert (
        reply["text"].startswith("Still firing") and reply["metadata"]["event_payload"]["anomaly_id"] == "a2"
    )
    assert len(fake.top_level_messages()) == 2
    assert bot.statuses("a2") == ["folded"] and bot.delivery("a2").slack_ts == reply["ts"]

    # The cooldown has passed (event time): a new top-level message, which opens a new cooldown.
    bot.deliverer.intake(anomaly("a3", window_end=T0 + 16 * MINUTE))
    bot.deliverer.intake(anomaly("a4", window_end=T0 + 17 * MINUTE))
    assert await bot.deliverer.drain(5)
    assert len(fake.top_level_messages()) == 3
    assert bot.delivery("a4").parent_id == "a3"
    assert len(fake.replies(bot.delivery("a3").slack_ts)) == 1


async def test_resolved_updates_the_original_message(fake: FakeSlack, bot: Harness) -> None:
    bot.deliverer.intake(anomaly("a1"))
    assert await bot.deliverer.drain(5)
    bot.deliverer.intake(resolution("r1", resolves="a1", window_end=T0 + 3 * MINUTE))
    bot.deliverer.intake(resolution("r1", resolves="a1", window_end=T0 + 3 * MINUTE))  # duplicate
    assert await bot.deliverer.drain(5)

    ts = bot.delivery("a1").slack_ts
    [update] = fake.calls("chat.update")
    assert update.body["ts"] == ts
    [message] = fake.top_level_messages()
    assert message["text"].startswith("RESOLVED") and "edited" in message
    assert message["attachments"][0]["color"] == SEVERITY_COLORS["resolved"]
    [reply] = fake.replies(ts)
    assert reply["text"].startswith("RESOLVED")
    assert bot.statuses() == ["sent", "updated"]
    assert bot.delivery("r1").slack_ts == ts

    # The key flaps back within the cooldown: it goes into the same thread, marked as re-opened.
    bot.deliverer.intake(anomaly("a2", window_end=T0 + 6 * MINUTE))
    assert await bot.deliverer.drain(5)
    assert len(fake.top_level_messages()) == 1
    assert fake.replies(ts)[-1]["text"].startswith("Fired again after being resolved")


async def test_rate_limit_honours_retry_after_then_delivers_once(fake: FakeSlack, bot: Harness) -> None:
    fake.rate_limit_next(1, retry_after=1, apis={"chat.postMessage"})
    bot.deliverer.intake(anomaly("a1"))
    assert await bot.deliverer.drain(5)

    first, second = fake.calls("chat.postMessage")
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 0.95  # waited for Retry-After, not for the 50 ms backoff
    assert len(fake.top_level_messages()) == 1
    assert bot.statuses() == ["retry", "sent"]
    assert bot.records[0]["http_status"] == 429 and bot.records[0]["error"] == "ratelimited"
    assert [r["attempt"] for r in bot.records] == [1, 2]
    # A 429 is a definite "not posted": no history lookup was needed.
    assert fake.calls("conversations.history") == []
    # What our process added, taken in -> Slack's OK, includes the Retry-After wait.
    (in_process,) = bot.deliverer.in_process_ms
    assert 950 <= in_process < 5000


async def test_own_time_leaves_out_slacks_answer(fake: FakeSlack) -> None:
    # Slack takes 0.4 s to answer (within the client's timeout): that is in taken in -> Slack's OK,
    # not in alerting's own share, which is the rest (a few ms here: no broker, no load).
    harness = make_harness(
        make_settings(slack_bot_token=TEST_TOKEN, slack_base_url=fake.base_url, slack_timeout_seconds=5)
    )
    fake.hang_next(1, 0.4, then_process=True, apis={"chat.postMessage"})
    harness.deliverer.intake(anomaly("a1"))
    assert await harness.deliverer.drain(5)
    assert harness.statuses() == ["sent"]
    (in_process,) = harness.deliverer.in_process_ms
    (own,) = harness.deliverer.own_ms
    assert in_process >= 400
    assert 0 <= own < 200


def test_in_process_summary_uses_nearest_rank() -> None:
    from services.alerting.views import in_process_summary

    assert in_process_summary([]) == {"count": 0}
    values = list(range(1, 101))  # 1..100 ms
    assert in_process_summary(values) == {"count": 100, "p50": 50, "p99": 99, "max": 100}


async def test_server_errors_are_retried_then_delivered_once(fake: FakeSlack, bot: Harness) -> None:
    fake.fail_next(2, 500, apis={"chat.postMessage"})
    bot.deliverer.intake(anomaly("a1"))
    assert await bot.deliverer.drain(5)

    assert [c.status for c in fake.calls("chat.postMessage")] == [500, 500, 200]
    assert len(fake.top_level_messages()) == 1
    assert bot.statuses() == ["retry", "retry", "sent"]
    assert [r["http_status"] for r in bot.records] == [500, 500, 200]
    # A 5xx might have posted: each re-post was preceded by a lookup that found nothing.
    assert len(fake.calls("conversations.history")) == 2


async def test_hang_times_out_and_is_retried(fake: FakeSlack, bot: Harness) -> None:
    fake.hang_next(1, 1.0, apis={"chat.postMessage"})  # client timeout is 0.3 s
    bot.deliverer.intake(anomaly("a1"))
    assert await bot.deliverer.drain(5)

    assert len(fake.calls("chat.postMessage")) == 2
    assert len(fake.top_level_messages()) == 1
    retry, sent = bot.records
    assert retry["status"] == "retry" and retry["http_status"] is None and "Timeout" in retry["error"]
    assert sent["status"] == "sent"


async def test_timed_out_post_that_slack_accepted_is_not_posted_again(fake: FakeSlack) -> None:
    harness = make_harness(
        make_settings(
            slack_bot_token=TEST_TOKEN,
            slack_base_url=fake.base_url,
            alert_retry_base_seconds=1.0,
            alert_retry_max_seconds=1.0,  # (the default here caps any backoff at 0.2 s)
        )
    )
    # Slack takes the message at 0.5 s, after our 0.3 s timeout; the retry comes 1 s after the
    # timeout (with the backoff capped at 0.2 s, the retry's history lookup and Slack's processing
    # both fell at 0.5 s and raced: 2 posts on a busy box).
    fake.hang_next(1, 0.5, then_process=True, apis={"chat.postMessage"})
    harness.deliverer.intake(anomaly("a1"))
    assert await harness.deliverer.drain(5)

    assert len(fake.calls("chat.postMessage")) == 1
    [message] = fake.top_level_messages()
    assert harness.delivery("a1").slack_ts == message["ts"]
    assert harness.statuses() == ["retry", "sent"]


async def test_crash_after_slack_accepted_is_not_posted_again_after_restart(fake: FakeSlack) -> None:
    settings = make_settings(
        slack_bot_token=TEST_TOKEN, slack_base_url=fake.base_url, slack_timeout_seconds=5
    )
    before = make_harness(settings)
    fake.hang_next(1, 0.3, then_process=True, apis={"chat.postMessage"})
    before.deliverer.intake(anomaly("a1"))
    delivering = asyncio.create_task(before.deliverer.deliver_due())
    await asyncio.sleep(0.1)
    delivering.cancel()  # the process dies with the request in flight
    with pytest.raises(asyncio.CancelledError):
        await delivering
    assert before.delivery("a1").unknown_outcome  # the intent survived in the table
    await asyncio.sleep(0.4)  # ... and Slack did post it
    assert len(fake.top_level_messages()) == 1

    after = before.restarted()
    assert await after.deliverer.drain(5)
    assert len(fake.calls("chat.postMessage")) == 1
    assert len(fake.top_level_messages()) == 1
    assert after.delivery("a1").slack_ts == fake.top_level_messages()[0]["ts"]


async def test_restart_during_outage_delivers_later(fake: FakeSlack) -> None:
    settings = make_settings(slack_bot_token=TEST_TOKEN, slack_base_url=fake.base_url)
    before = make_harness(settings)
    fake.fail_next(1000, 503)
    before.deliverer.intake(anomaly("a1"))
    before.deliverer.intake(anomaly("a2", window_end=T0 + MINUTE))  # folds into a1, waits for it
    assert not await before.deliverer.drain(0.3)
    [pending_a1, pending_a2] = before.deliverer.pending()
    assert pending_a1["anomaly_id"] == "a1" and pending_a1["attempts"] >= 2
    assert pending_a1["last_http_status"] == 503 and pending_a2["attempts"] == 0

    fake._faults.clear()  # Slack is back; the process restarts from the recovered tables
    after = before.restarted()
    assert await after.deliverer.drain(5)
    assert len(fake.top_level_messages()) == 1
    assert len(fake.replies(after.delivery("a1").slack_ts)) == 1
    assert after.statuses("a1")[-1] == "sent" and set(after.statuses("a1")[:-1]) == {"retry"}
    assert after.statuses("a2") == ["folded"]
    assert_no_secrets(after)


async def test_permanent_errors_are_not_retried(fake: FakeSlack) -> None:
    wrong_channel = make_harness(
        make_settings(slack_bot_token=TEST_TOKEN, slack_base_url=fake.base_url, slack_channel="C0NOPE")
    )
    wrong_channel.deliverer.intake(anomaly("a1"))
    assert await wrong_channel.deliverer.drain(5)
    assert len(fake.calls("chat.postMessage")) == 1
    [record] = wrong_channel.records
    assert (record["status"], record["error"], record["attempt"]) == (
        "failed_permanent",
        "channel_not_found",
        1,
    )

    wrong_token = make_harness(
        make_settings(slack_bot_token="xoxb-wrong-token", slack_base_url=fake.base_url)
    )
    wrong_token.deliverer.intake(anomaly("b1"))
    assert await wrong_token.deliverer.drain(5)
    assert len(fake.calls("chat.postMessage")) == 2
    assert wrong_token.records[0]["error"] == "invalid_auth"
    assert wrong_token.statuses() == ["failed_permanent"]


async def test_gives_up_after_the_configured_time(fake: FakeSlack) -> None:
    harness = make_harness(
        make_settings(slack_bot_token=TEST_TOKEN, slack_base_url=fake.base_url, alert_give_up_after_ms=300)
    )
    fake.fail_next(1000, 500)
    harness.deliverer.intake(anomaly("a1"))
    assert await harness.deliverer.drain(5)
    assert harness.statuses()[-1] == "failed_permanent"
    assert "gave up" in harness.records[-1]["error"]


async def test_token_never_in_logs_or_records(fake: FakeSlack, bot: Harness) -> None:
    # Every failure path once; the autouse fixture checks the log records at DEBUG.
    fake.rate_limit_next(1, retry_after=0.1)
    fake.fail_next(1, 500)
    fake.hang_next(1, 1.0)
    bot.deliverer.intake(anomaly("a1"))
    assert await bot.deliverer.drain(5)
    bot.deliverer.intake(resolution("r1", resolves="a1"))
    fake.error_next(1, "internal_error", apis={"chat.update"})
    assert await bot.deliverer.drain(5)
    assert bot.statuses("r1") == ["retry", "updated"]
    assert all(c.authorized for c in fake.requests)  # the token was used, just never shown
    assert TEST_TOKEN not in repr(bot.settings) and TEST_TOKEN not in str(bot.settings.model_dump())
    assert_no_secrets(bot)


async def test_webhook_posts_and_folds_by_sending_nothing(fake: FakeSlack) -> None:
    harness = make_harness(make_settings(slack_webhook_url=fake.webhook_url))
    assert harness.deliverer.mode == "webhook"
    fake.rate_limit_next(1, retry_after=0.2)
    fake.fail_next(1, 502)
    harness.deliverer.intake(anomaly("a1"))
    harness.deliverer.intake(anomaly("a2", window_end=T0 + MINUTE))
    harness.deliverer.intake(resolution("r1", resolves="a1", window_end=T0 + 2 * MINUTE))
    assert await harness.deliverer.drain(5)

    assert [c.status for c in fake.calls("webhook")] == [429, 502, 200, 200]
    alert, resolved = fake.messages
    assert alert["text"].startswith("WARNING") and resolved["text"].startswith("RESOLVED")
    assert harness.statuses("a1") == ["retry", "retry", "sent"]
    assert harness.statuses("a2") == ["folded"]
    assert harness.statuses("r1") == ["sent"]
    assert_no_secrets(harness)


async def test_webhook_permanent_error(fake: FakeSlack) -> None:
    harness = make_harness(make_settings(slack_webhook_url=fake.webhook_url.replace("XXXX", "YYYY", 1)))
    harness.deliverer.intake(anomaly("a1"))
    assert await harness.deliverer.drain(5)
    [record] = harness.records
    assert (record["status"], record["http_status"], record["error"]) == (
        "failed_permanent",
        404,
        "no_service",
    )


async def test_without_slack_alerts_are_logged_and_recorded(caplog: pytest.LogCaptureFixture) -> None:
    harness = make_harness(make_settings())
    assert harness.deliverer.mode == "log"
    harness.deliverer.intake(anomaly("a1"))
    harness.deliverer.intake(resolution("r1", resolves="a1"))
    assert await harness.deliverer.drain(5)
    assert harness.statuses() == ["logged", "logged"]
    alerts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]
    assert any("CTR above expected on campaign 42" in m for m in alerts)
    assert any("RESOLVED campaign 42" in m for m in alerts)


async def test_run_loop_delivers_when_woken(fake: FakeSlack, bot: Harness) -> None:
    loop_task = asyncio.create_task(bot.deliverer.run())
    try:
        bot.deliverer.intake(anomaly("a1"))
        for _ in range(100):
            if bot.statuses() == ["sent"]:
                break
            await asyncio.sleep(0.02)
        assert bot.statuses() == ["sent"]
    finally:
        loop_task.cancel()


async def test_expired_deliveries_are_forgotten(fake: FakeSlack, bot: Harness) -> None:
    bot.deliverer.intake(anomaly("a1"))
    assert await bot.deliverer.drain(5)
    assert bot.deliverer.forget_expired() == 0
    now = bot.delivery("a1").finished_ms + bot.settings.alert_retention_ms + 1
    bot.deliverer._clock = lambda: now
    assert bot.deliverer.forget_expired() == 1
    assert bot.deliveries == {} and bot.open_alerts == {}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (orjson.dumps({"anomaly_id": "x", "kind": "ctr_sideways"}), "unknown 'kind'"),
        (
            orjson.dumps({"anomaly_id": "x", "kind": "ctr_high", "key_type": "campaign", "key": "1"}),
            "unknown 'severity'",
        ),
        (
            orjson.dumps({"anomaly_id": "x", "kind": "resolved", "key_type": "campaign", "key": "1"}),
            "'resolves'",
        ),
    ],
)
def test_invalid_anomalies_are_rejected_without_echoing_values(raw: bytes, problem: str) -> None:
    with pytest.raises(InvalidAnomaly, match=problem):
        parse_anomaly(raw)


def incident_window(anomaly_id: str, incident_id: str, window_end: int, kind: str = "ctr_high") -> Anomaly:
    return replace(anomaly(anomaly_id, window_end=window_end, kind=kind), incident_id=incident_id)


async def test_an_incident_stays_in_one_message_until_resolved(fake: FakeSlack, bot: Harness) -> None:
    # The detector reports every flagged window with its own anomaly_id and the incident's id.
    bot.deliverer.intake(incident_window("w0", "w0", T0))
    for minute in (1, 20, 40):  # later windows of the incident, also past the cooldown
        bot.deliverer.intake(incident_window(f"w{minute}", "w0", T0 + minute * MINUTE))
    assert await bot.deliverer.drain(5)
    assert len(fake.top_level_messages()) == 1
    ts = bot.delivery("w0").slack_ts
    assert len(fake.replies(ts)) == 3

    bot.deliverer.intake(resolution("r", resolves="w0", window_end=T0 + 41 * MINUTE))
    assert await bot.deliverer.drain(5)
    [message] = fake.top_level_messages()
    assert message["text"].startswith("RESOLVED")
    assert bot.statuses("r") == ["updated"]


async def test_a_superseding_incident_resolves_the_keys_message(fake: FakeSlack, bot: Harness) -> None:
    bot.deliverer.intake(incident_window("x0", "x0", T0))
    # Another kind while x is open: a new incident that supersedes x, within the cooldown.
    bot.deliverer.intake(incident_window("y0", "y0", T0 + 2 * MINUTE, kind="traffic_drop"))
    bot.deliverer.intake(incident_window("y1", "y0", T0 + 30 * MINUTE, kind="traffic_drop"))
    bot.deliverer.intake(resolution("r", resolves="y0", window_end=T0 + 31 * MINUTE))
    assert await bot.deliverer.drain(5)

    [message] = fake.top_level_messages()
    assert message["text"].startswith("RESOLVED")
    assert len(fake.replies(message["ts"])) == 3  # y0, y1, the resolved reply
    assert bot.delivery("r").parent_id == "x0"


def test_alerting_tables_write_before_the_producer_knows_their_changelogs() -> None:
    """Right after start the producer's metadata cache may not know a changelog created a moment
    before; a table write that asks it for partitions then fails half-way through an intake (seen
    in CI: every later window of an incident became a new top-level message). The alerting tables
    compute their partition from the key, so a write never consults that cache."""
    from unittest import mock

    from services.alerting import agents

    producer_type = type(agents.app.producer)
    no_metadata = TypeError("'NoneType' object is not iterable")  # aiokafka's error for that case
    with (
        mock.patch.object(producer_type, "key_partition", side_effect=no_metadata),
        mock.patch.object(producer_type, "send_soon") as send_soon,
    ):
        agents.delivery_table["a1"] = b"{}"
        agents.open_alert_table["campaign:c-1"] = b"{}"
    partitions = [future.message.partition for (future,), _ in send_soon.call_args_list]
    assert len(partitions) == 2
    assert all(0 <= p < agents.settings.topic_partitions for p in partitions)
