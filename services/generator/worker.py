"""The generator as a faust service: one task producing live traffic (see producer.run_live)."""

from __future__ import annotations

from services.generator.producer import run_live
from shared.app import make_app
from shared.settings import get_settings

settings = get_settings()
app = make_app("generator", settings.generator_web_port)
# It consumes nothing: without this the worker subscribes to an empty topic set, which aiokafka
# refuses. Producer-only mode still starts the web server, the producer and app tasks.
app.producer_only = True


@app.task
async def live_traffic() -> None:
    # Its own aiokafka producer: idempotent and batched like the CLI's, and independent of the
    # app's producer lifecycle. Cancelled (and flushed) when the worker stops.
    await run_live(settings)
