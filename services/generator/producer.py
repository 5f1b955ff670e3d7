"""Sending generated messages to Kafka: bounded (as fast as possible) and live (at event-time pace)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from services.generator.spec import Format, GeneratedMessage, TopicKind, TrafficSpec
from services.generator.traffic import TrafficGenerator
from shared.app import ensure_topics
from shared.kafka_batches import BatchSender, Deliveries
from shared.kafka_security import aiokafka_kwargs
from shared.settings import Settings
from shared.topics import topic_names

log = logging.getLogger(__name__)

KINDS_OF_FORMAT: dict[Format, tuple[TopicKind, ...]] = {
    "impressions": ("impressions", "clicks"),
    "ad_events": ("ad_events",),
    "clickstream": ("clickstream",),
}


def topic_map(settings: Settings) -> dict[TopicKind, str]:
    names = topic_names(settings)
    return {
        "impressions": names.impressions,
        "clicks": names.clicks,
        "ad_events": names.ad_events,
        "clickstream": names.clickstream,
    }


def topics_for(settings: Settings, formats: Iterable[Format]) -> list[str]:
    topics = topic_map(settings)
    return [topics[k] for f in formats for k in KINDS_OF_FORMAT[f]]


def make_producer(settings: Settings) -> AIOKafkaProducer:
    # Idempotence keeps each partition in send order even when a batch is retried, which the
    # truth labels (duplicates, clicks before impressions) rely on.
    return AIOKafkaProducer(
        **aiokafka_kwargs(settings),
        linger_ms=5,
        max_batch_size=1_048_576,
        acks="all",
        enable_idempotence=True,
    )


@dataclass
class ProduceReport:
    messages: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    by_truth: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0  # first send to last acknowledgement

    def add(self, topic: str, truth: str) -> None:
        self.messages += 1
        self.by_topic[topic] = self.by_topic.get(topic, 0) + 1
        self.by_truth[truth] = self.by_truth.get(truth, 0) + 1


async def produce_all(
    settings: Settings,
    messages: Iterable[GeneratedMessage],
    formats: Iterable[Format],
    on_message: Callable[[str, GeneratedMessage], None] | None = None,
    per_message: bool = False,
) -> ProduceReport:
    """Create the topics, send everything without waiting per message, flush, check every ack.

    per_message=True uses producer.send() for each message (simpler, ~3x slower) instead of
    filling partition batches ourselves.
    """
    topics = topic_map(settings)
    await ensure_topics(settings, topics_for(settings, formats))
    producer = make_producer(settings)
    await producer.start()
    report = ProduceReport()
    try:
        started = time.perf_counter()
        deliveries = Deliveries()
        batches = BatchSender(producer, deliveries)
        for m in messages:
            topic = topics[m.topic_kind]
            if per_message:
                # awaiting send() only enqueues into a batch (and applies backpressure when full)
                deliveries.add(await producer.send(topic, m.value, key=m.key))
            else:
                await batches.send(topic, m.key, m.value)
            report.add(topic, m.truth)
            if on_message is not None:
                on_message(topic, m)
        await batches.flush()
        await producer.flush()
        await deliveries.wait_all()
        report.elapsed_s = time.perf_counter() - started
    finally:
        await producer.stop()
    return report


def live_spec(settings: Settings, **overrides: object) -> TrafficSpec:
    """An endless spec at EVENT_RATE whose event time starts at the wall clock."""
    seed = settings.generator_seed if settings.generator_seed is not None else random.randrange(2**32)
    args: dict = {
        "n_events": None,
        "seed": seed,
        "start_ms": int(time.time() * 1000),
        "rate": settings.event_rate,
        "click_ratio": settings.click_ratio,
        "campaigns": settings.generator_campaigns,
        "ads": settings.generator_ads,
        "users": settings.generator_users,
    }
    args.update(overrides)
    return TrafficSpec(**args)


async def run_live(settings: Settings, spec: TrafficSpec | None = None) -> None:
    """Produce forever (until cancelled), sending each message when the wall clock reaches its time."""
    spec = spec or live_spec(settings)
    topics = topic_map(settings)
    await ensure_topics(settings, topics_for(settings, spec.formats))
    producer = make_producer(settings)
    await producer.start()
    log.info("live traffic: %s/s, seed %s, formats %s", spec.rate, spec.seed, ",".join(spec.formats))
    # Pace by a monotonic clock (it does not jump with NTP) aligned once to the wall clock, so
    # event time tracks "now" (what was due during the setup above goes out at once).
    mono_to_wall_ms = time.time() * 1000 - time.monotonic() * 1000
    deliveries = Deliveries()
    try:
        for m in TrafficGenerator(spec):
            ahead_ms = m.at_ms - (time.monotonic() * 1000 + mono_to_wall_ms)
            if ahead_ms > 1:
                await asyncio.sleep(ahead_ms / 1000)
            deliveries.add(await producer.send(topics[m.topic_kind], m.value, key=m.key))
    finally:
        await producer.stop()
