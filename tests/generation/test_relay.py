"""Job events between processes through PostgreSQL LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from generation.events import EventBus, JobEvent, JobProgress, JobSucceeded
from generation.relay import EventRelay
from storage.image_store import ImageStore

pytestmark = pytest.mark.postgres


async def _drain(queue: asyncio.Queue[JobEvent], count: int) -> list[JobEvent]:
    return [await asyncio.wait_for(queue.get(), 10) for _ in range(count)]


async def test_events_cross_processes_once_with_previews_through_the_store(
    postgres_url: str, tmp_path: Path
) -> None:
    store = ImageStore(tmp_path / "shared")
    worker_bus, bot_bus = EventBus(), EventBus()
    worker_relay = EventRelay(postgres_url, worker_bus, store)
    bot_relay = EventRelay(postgres_url, bot_bus, store)
    await worker_relay.start()
    await bot_relay.start()
    try:
        async with bot_bus.subscribe() as heard, worker_bus.subscribe() as own:
            worker_bus.publish(JobProgress(7, 1, 10, b"\x89PNG preview"))
            worker_bus.publish(JobProgress(7, 2, 10, b"too soon"))  # throttled
            worker_bus.publish(JobProgress(7, 10, 10, None))  # the last step always goes
            worker_bus.publish(JobSucceeded(7))
            received = await _drain(heard, 3)
            await asyncio.sleep(0.3)
            assert heard.empty()
            assert own.qsize() == 4, "the worker's own bus does not hear itself back"
    finally:
        await worker_relay.close()
        await bot_relay.close()
    # A preview is read off the event loop, so its event may come after the next ones.
    assert set(received) == {
        JobProgress(7, 1, 10, b"\x89PNG preview"),
        JobProgress(7, 10, 10, None),
        JobSucceeded(7),
    }
    assert store.get("previews/7.png") == b"\x89PNG preview", "kept a while for slow readers"
