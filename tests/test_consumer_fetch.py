"""shared.consumer_fetch: a worker's consumer long-polls the broker for CONSUMER_FETCH_MAX_WAIT_MS,
not faust's fixed 1.5 s (why: the module's docstring)."""

from __future__ import annotations

import asyncio

from shared.app import make_app
from shared.settings import Settings


def test_a_workers_consumer_waits_at_the_broker_as_configured():
    async def created_consumer_wait(settings: Settings) -> int:
        app = make_app("fetch-wait-test", 6999, settings)
        # the aiokafka consumer faust builds for the worker (built, not started: no broker needed)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        return consumer._fetch_max_wait_ms

    # explicit values: a developer's .env may set the variable
    assert asyncio.run(created_consumer_wait(Settings(consumer_fetch_max_wait_ms=75))) == 75
    assert asyncio.run(created_consumer_wait(Settings(consumer_fetch_max_wait_ms=20))) == 20
    assert Settings.model_fields["consumer_fetch_max_wait_ms"].default == 50
