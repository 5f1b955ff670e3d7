"""The one factory every service uses to build its faust `app`."""

from __future__ import annotations

import logging

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.settings import Settings, get_settings
from shared.topics import topic_names

log = logging.getLogger(__name__)


async def ensure_topics(settings: Settings, names: list[str]) -> None:
    """Create the project's topics with explicit partition counts (the broker never auto-creates)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(n, settings.topic_partitions, settings.topic_replication_factor)
            for n in names
            if n not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:  # another service created them first
                pass
            log.info("created topics: %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()


class MeshApp(faust.App):
    """faust.App that creates the mesh's topics before its consumers subscribe."""

    mesh_settings: Settings

    async def on_first_start(self) -> None:
        await super().on_first_start()
        await ensure_topics(self.mesh_settings, topic_names(self.mesh_settings).all())


def make_app(service: str, web_port: int, settings: Settings | None = None) -> MeshApp:
    settings = settings or get_settings()
    app = MeshApp(
        f"{settings.topic_prefix}adclick-{service}",
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=web_port,
        web_in_thread=False,
        producer_linger_ms=5,
        producer_max_batch_size=1_048_576,
        producer_acks=-1,
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=16_384,
        table_cleanup_interval=60.0,
        # faust's window-close sweep is wall-clock based; the mesh owns its event-time windows.
        # Recovery must read the whole changelog before the agents run.
        table_standby_replicas=0,
        logging_config=None,
    )
    app.mesh_settings = settings
    return app
