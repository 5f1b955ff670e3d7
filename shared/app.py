"""The one factory every service uses to build its faust `app`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any

import faust
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faust import web
from faust.app.base import BootStrategy
from faust.transport.drivers.aiokafka import Producer as AIOKafkaFaustProducer
from mode import CrashingSupervisor
from mode.utils.times import want_seconds

from shared import compiled_modules, consumer_fetch, consumer_rewind, message_handoff
from shared.batch_output import BatchOutput
from shared.kafka_batches import murmur2
from shared.kafka_security import aiokafka_kwargs, faust_credentials
from shared.logs import logging_config
from shared.metrics import PrometheusSensor, consumers, exposition, refresh_consumer_lag
from shared.recovery_watchdog import CHECK_EVERY_S, Kick, RecoveryWatchdog, Stop
from shared.settings import Settings, get_settings
from shared.topics import topic_names

log = logging.getLogger(__name__)

# faust's consumer can skip messages after a start or rebalance: see shared/consumer_rewind.py
consumer_rewind.install()
# ...and a fetch long-polling for quiet partitions holds back the busy ones: shared/consumer_fetch.py
consumer_fetch.install()
# ...and faust's per-message handoff pays for a lock and a settings lookup: shared/message_handoff.py
message_handoff.install()


async def ensure_topics(
    settings: Settings,
    names: list[str],
    visible_within_s: float = 60.0,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create the project's topics with explicit partition counts (the broker never auto-creates),
    then wait until the broker's metadata lists each of them with its partitions.

    Why wait: a consumer that asks for metadata before a new topic shows up there joins its group
    with the topic "missing", gets no partitions of it, and looks again only when its metadata
    expires. On a loaded machine the controller took > 2 s to publish new topics, and a test's
    ingest sat idle with nothing assigned for its whole 3-minute wait."""
    admin = AIOKafkaAdminClient(**aiokafka_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                n,
                settings.topic_partitions,
                settings.topic_replication_factor,
                topic_configs=dict((configs or {}).get(n, {})),
            )
            for n in names
            if n not in existing
        ]
        if missing:
            # another service may have created them a moment ago
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            log.info("created topics: %s", ", ".join(t.name for t in missing))
            await _wait_until_listed(admin, [t.name for t in missing], visible_within_s)
    finally:
        await admin.close()


async def _wait_until_listed(admin: AIOKafkaAdminClient, names: list[str], within_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        described = await admin.describe_topics(names)
        pending = sorted(t["topic"] for t in described if t["error_code"] != 0 or not t["partitions"])
        if not pending:
            return
        if loop.time() > deadline:
            # Not fatal: the consumers' metadata refresh (consumer_metadata_max_age_ms) finds
            # them later and rebalances.
            log.warning("topics not yet in the broker's metadata after %.0f s: %s", within_s, pending)
            return
        await asyncio.sleep(0.2)


class RawSchema(faust.Schema):
    """Bytes in, bytes out, with the event built straight from the message. faust's own decode
    passes the key and the value through its serializer registry and the "raw" codec, which hand
    back the same bytes: 5.4 us per message, against 0.6 us here (timed alone; ingest gets one
    message per raw event)."""

    def compile(self, app: Any, **kwargs: Any) -> Any:
        event = app.conf.Event

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            return event(app, message.key, message.value, message.headers, message)

        return decode


def raw_schema() -> faust.Schema:
    """Bytes in, bytes out: hot paths decode with orjson themselves (faust.Record costs ~10x)."""
    return RawSchema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


def key_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), as producers use it for keyed messages."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@cache
def partition_key(name: str, partition: int, partitions: int) -> bytes:
    """b"\x00<name>:<partition>:<n>" with the first n that lands in `partition` itself: a table key
    (KeyedTable partitions by the key's hash) restored by the worker that owns that partition, or a
    message key that reaches it. "\x00" cannot start a real key: those are ids and names."""
    n = 0
    while key_partition(f"\x00{name}:{partition}:{n}".encode(), partitions) != partition:
        n += 1
    return f"\x00{name}:{partition}:{n}".encode()


def table_json(value: Any) -> bytes:
    """orjson.dumps for bytes a table keeps (as key or value) until they expire.

    orjson 3.12+ returns a bytes object whose allocation is at least 4 KiB however short the JSON;
    a table holding one per remembered impression grew ingest by ~4 KiB per event (10-minute soak:
    +761 MiB). The copy is sized to the JSON: 100k entries of ~200 B cost 228 B each, not 4,120.
    """
    return bytes(memoryview(orjson.dumps(value)))


class KeyedTable(faust.Table):
    """A table whose changelog partition is the Kafka partition of its key, computed here.

    Keyed like the input topic, so state sits in the partition that owns its input; and unlike
    faust's `use_partitioner`, writes work from timers and before the producer has metadata.
    With `partition_by`, an entry takes the partition of the key it names instead (e.g. one
    member of an aggregate's set goes where the aggregate's input and state are).
    """

    partition_by: Callable[[bytes], bytes] | None = None
    _unwritten: list[Any] | None = None  # changelog writes not yet acknowledged (FutureMessage)

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        if self._unwritten is None:
            self._unwritten = []
        self._unwritten.append(fut)
        return fut

    async def written(self) -> None:
        """Wait until every changelog write made so far is acknowledged by the broker."""
        unwritten, self._unwritten = self._unwritten or [], []
        pending = [fut for fut in unwritten if not fut.done()]
        if pending:
            await asyncio.gather(*pending)

    def partition_for_key(self, key: Any) -> int:
        key = self.partition_by(key) if self.partition_by else key
        return key_partition(key.encode() if isinstance(key, str) else key, self.partitions)

    def get_stored(self, key: Any) -> bytes | None:
        """table.get(key), straight from the in-memory store: faust's get runs a sensor hook and,
        for a key it does not hold, raises and catches a KeyError (a tenth of ingest's join, where
        most keys are new)."""
        store = self.data.data
        return store.get(key) if isinstance(store, dict) else self.get(key)

    async def write_many(
        self,
        out: BatchOutput,
        writes: Mapping[Any, bytes | None],
        partitions: Mapping[Any, int] | None = None,
    ) -> None:
        """Set (or, for None, delete) many keys: the store here, the changelog through `out`, one
        Kafka batch per partition. The same records `table[key] = value` would send, without
        faust's per-key send (a future, a buffer hop and an aiokafka send each: a fifth of
        ingest's join in the profile). The caller flushes `out` before its batch is acked.

        `partitions`: key -> its partition where the caller knows it already, i.e. the input
        partition the key's events came from, which is by design `partition_for_key(key)`
        (tests/test_changelog_partitions.py checks the callers). Hashing every written key again
        was ~3% of ingest and engagement (a distinct-set member's entry is decoded first)."""
        topic = self.changelog_topic.get_topic_name()
        store = self.data
        known = partitions or {}
        for key, value in writes.items():
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
            raw_key = key.encode() if isinstance(key, str) else key
            p = known.get(key)
            if p is None:
                p = self.partition_for_key(key)
            await out.send(topic, raw_key, value, partition=p)  # type: ignore[arg-type]


def keyed_table(
    app: faust.App,
    name: str,
    partitions: int,
    partition_by: Callable[[bytes], bytes] | None = None,
    key_type: type = bytes,
) -> KeyedTable:
    """bytes (or str) -> bytes table (values are orjson, small per key: never a growing list)."""
    table = KeyedTable(
        app,
        name=name,
        default=None,
        beacon=app.tables.beacon,
        partitions=partitions,
        # faust derives a table's changelog serializers from key_type/value_type only ("raw" for
        # bytes); a schema= alone would leave them "json" and recovery would decode garbage.
        key_type=key_type,
        value_type=bytes,
    )
    table.partition_by = partition_by
    return app.tables.add(table)


async def tables_written(app: Any) -> None:
    for table in list(app.tables.values()):
        if isinstance(table, KeyedTable):
            await table.written()


_faust_producer_flush = AIOKafkaFaustProducer.flush


async def flush_with_table_writes(self: Any) -> None:
    """faust's Producer.flush, which also waits for every table write to be acknowledged.

    faust commits offsets after `producer.flush()`, and its flush gives up on its buffer of table
    changelog writes after 0.1 s without a message sent (ProducerBuffer.flush_atmost): a commit
    could then cover input whose state was still in that buffer. A kill -9 right after lost the
    state while the input counted as read, and a rebalance restored the key's previous state (its
    recovery stopped at an end offset taken before the write landed). Seen as exactly one event
    missing from a window now and then in the kill -9 and rebalance tests."""
    await _faust_producer_flush(self)
    await tables_written(self.app)


AIOKafkaFaustProducer.flush = flush_with_table_writes  # type: ignore[method-assign]


class MeshApp(faust.App):
    """faust.App that creates the mesh's topics before its consumers subscribe."""

    mesh_settings: Settings
    service: str = ""
    # consumers a service runs besides faust's (shared/direct_reader.py: ingest's raw topics, the
    # warehouse's inputs): their lag is on /metrics, their partitions count for /ready
    direct_consumers: list[Any]
    faust_consumer: bool

    def on_init_dependencies(self) -> Iterable[Any]:
        deps = super().on_init_dependencies()
        # faust's default Monitor sensor keeps per-message statistics nobody here reads (the mesh
        # has its own Prometheus sensor): 4-5% of every worker's CPU in the profile.
        self.sensors.remove(self.monitor)
        return deps

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        """An agent that raised stops the worker (crash-only), instead of faust's default of
        restarting the agent in this process. That restart is unsafe here: the failed batch stays
        unacknowledged and is not delivered again, so commits stall behind it until a rebalance;
        and the in-memory companions of the tables (window clocks, due index, relays) may already
        have moved past what the tables hold, so windows would not close until a restart. A new
        process rebuilds both from the commits and the changelogs, as after kill -9 (which the
        fault tests cover). Something must restart the worker: compose does, and so does
        deploy/run-local.sh. (An exception in a timer already stops the worker: mode crashes the
        app when one of its tasks fails.)"""
        await super()._on_agent_error(agent, exc)
        # With CrashingSupervisor (make_app) nothing restarts the agent meanwhile: a restarted
        # agent could apply later events first, and their replay marks would then make the
        # failed batch's events look like replays when a new worker reads them again.
        self.log.critical("agent %s failed, stopping the worker: %r", agent, exc)
        await self.crash(exc)

    async def on_started(self) -> None:
        if self.faust_consumer:  # tables to recover
            timeout_s = self.mesh_settings.recovery_stall_timeout_ms / 1000
            self.add_future(watch_table_recovery(self, timeout_s))
        await super().on_started()  # waits for the first table recovery, then starts timers

    async def on_first_start(self) -> None:
        await super().on_first_start()
        log.info("hot modules: %s", compiled_modules.decision()[1])
        # The tables' changelog topics too, as faust would create them (compaction settings):
        # faust creates them itself just before its consumer subscribes, and a consumer that
        # asked for metadata a moment too early joined without them. It then rebalanced when
        # its metadata refresh found them, mid-stream (a test's anomaly service, 30 s in).
        changelogs = {t.changelog_topic.get_topic_name(): changelog_config(t) for t in self.tables.values()}
        names = topic_names(self.mesh_settings).all() + sorted(changelogs)
        await ensure_topics(self.mesh_settings, names, configs=changelogs)
        tune_garbage_collector()


# Python's cyclic collector runs a young-generation pass every 700 net container allocations, and
# a full pass, over every object the process holds, every 100 of those. A stage allocates a few
# dicts and lists per event, so at thousands of events per second it ran passes all the time: in
# the profile, ingest's join spent 6% in the one allocation that usually triggered them.
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Fewer collector passes for a process that allocates per event, and none over what it set up
    at start (modules, faust's services): frozen, those are never scanned again. Run once the app
    has started. Measured on the 200k-event backlog: mesh CPU 187 -> 127 us per event (151 when
    frozen before the worker started: less start-up was frozen)."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    gc.freeze()


def changelog_config(table: Any) -> dict[str, str]:
    """The topic config faust's aiokafka transport gives a table's changelog (_topic_config)."""
    topic = table.changelog_topic
    flags = [flag for flag, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on]
    config = {"cleanup.policy": ",".join(flags)} if flags else {}
    if topic.retention:
        config["retention.ms"] = str(int(want_seconds(topic.retention) * 1000))
    return {**config, **{k: str(v) for k, v in (topic.config or {}).items()}}


def make_app(
    service: str,
    web_port: int,
    settings: Settings | None = None,
    secrets: Iterable[str] = (),
    faust_consumer: bool = True,
) -> MeshApp:
    """The faust app of one service. `secrets`: the service's own secret strings (beyond the
    shared settings' ones), masked in its logs. `faust_consumer=False`: a service that reads all
    its input through direct readers (shared/direct_reader.py) and has no tables runs without
    faust's consumer, conductor and table manager (with nothing to subscribe to, faust's
    conductor would fail: aiokafka refuses an empty subscription)."""
    settings = settings or get_settings()
    os.makedirs(f"{settings.data_dir}/faust", exist_ok=True)  # faust creates only the last level
    app = MeshApp(
        f"{settings.topic_prefix}adclick-{service}",
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=f"{settings.data_dir}/faust/{{conf.name}}",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=web_port,
        web_in_thread=False,
        # An agent that raises stops the worker; faust's default restarts it in this process
        # (see MeshApp._on_agent_error for why that is unsafe here).
        agent_supervisor=CrashingSupervisor,
        producer_linger_ms=5,
        producer_max_batch_size=1_048_576,
        producer_acks=-1,
        # A worker killed with -9 leaves the group after this long: its replacement waits no longer.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        # A topic created after the consumer subscribed (faust creates changelog topics itself) is
        # assigned only once the consumer's metadata is refreshed: every 30 s, not 5 min.
        consumer_metadata_max_age_ms=30_000,
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=16_384,
        table_cleanup_interval=60.0,
        # faust's window-close sweep is wall-clock based; the mesh owns its event-time windows.
        # Recovery must read the whole changelog before the agents run.
        table_standby_replicas=0,
        logging_config=logging_config(service, settings.log_format, [*settings.secret_values(), *secrets]),
    )
    app.mesh_settings = settings
    app.service = service
    if not faust_consumer:
        app.boot_strategy = BootStrategy(app, enable_kafka_consumer=False)
    app.faust_consumer = faust_consumer
    app.direct_consumers = []
    app.sensors.add(PrometheusSensor(service))
    add_health_views(app, service)
    return app


async def watch_table_recovery(app: MeshApp, timeout_s: float) -> None:
    """Kick, then stop, the worker when its table recovery stands still
    (shared/recovery_watchdog.py). Started by MeshApp.on_started before faust waits for the first
    recovery: faust starts timers only after it, so a timer would miss a stall at start-up."""
    watchdog = RecoveryWatchdog(timeout_s)
    while not app.should_stop:
        await app.sleep(CHECK_EVERY_S)
        try:
            action = watchdog.check(app.tables.recovery)
        except Exception:  # faust's internals changed: say so, and never stop a worker for it
            log.exception("the table recovery watchdog cannot read faust's recovery; it stops")
            return
        if isinstance(action, Kick):
            log.warning("%s: reading them again from %s", action.reason, action.offsets)
            try:  # bounded: a kick that hangs must not keep the stop from coming
                app.consumer.resume_partitions(action.offsets)
                await asyncio.wait_for(app.consumer.seek_wait(action.offsets), CHECK_EVERY_S)
            except Exception:
                log.exception("the kick failed; the worker stops if recovery does not move")
        elif isinstance(action, Stop):
            app.log.critical("stopping the worker: %s", action.reason)
            await app.crash(RuntimeError(action.reason))
            return


def add_health_views(app: faust.App, service: str) -> None:
    """/health: the process answers. /ready: it has partitions assigned (to faust's consumer or a
    direct reader) and is not rebalancing.
    (faust starts its web server only after table recovery, so answering implies recovered.)"""

    @app.page("/health")
    async def health(view: web.View, request: web.Request) -> web.Response:
        return view.json({"status": "ok", "service": service})

    @app.page("/ready")
    async def ready(view: web.View, request: web.Request) -> web.Response:
        assigned = sum(len(c.assignment()) for c in consumers(app))
        ok = not app.rebalancing and assigned > 0
        body = {"ready": ok, "service": service, "assigned_partitions": assigned}
        return view.json(body, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(view: web.View, request: web.Request) -> web.Response:
        await refresh_consumer_lag(app, service)
        body, content_type = exposition()
        return view.bytes(body, content_type=content_type.split(";")[0])


def owned_partitions(app: Any, topic: str) -> Callable[[], set[int]]:
    """The input partitions of `topic` this worker owns now; none while a rebalance (and the
    table recovery after it) is under way, when nothing is safely ours."""

    def owned() -> set[int]:
        if app.rebalancing or getattr(app, "in_recovery", False):
            return set()
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}

    return owned
