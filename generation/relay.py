"""Job events between processes through PostgreSQL LISTEN/NOTIFY.

Each process keeps its in-process EventBus. The relay sends what is published there to the
other processes (NOTIFY, with the sender's origin so nobody hears itself twice) and publishes
what they send. Payloads carry ids and numbers only: a progress preview goes to the image store
and the payload names its key. NOTIFY is a hint: whoever delivers results also polls the
database (the outbox sweep), so a lost connection loses at most some progress updates.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import time
import uuid
from typing import Any

from sqlalchemy.engine import make_url

from generation.events import (
    EventBus,
    JobCancelled,
    JobClaimed,
    JobEvent,
    JobFailed,
    JobProgress,
    JobSucceeded,
)
from storage.image_store import ImageStore

logger = logging.getLogger(__name__)

CHANNEL = "imagine_events"
KINDS: dict[str, type[JobEvent]] = {
    "claimed": JobClaimed,
    "progress": JobProgress,
    "succeeded": JobSucceeded,
    "failed": JobFailed,
    "cancelled": JobCancelled,
}
NAMES = {kind: name for name, kind in KINDS.items()}
# Progress crosses processes at most this often per job (the first and last step always do).
PROGRESS_INTERVAL = 0.5
# A finished job's last preview stays this long for slow readers, then goes.
PREVIEW_KEPT_SECONDS = 30.0
RELAYED_KEPT = 10_000


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL as a plain DSN for asyncpg."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def preview_key(job_id: int) -> str:
    return f"previews/{job_id}.png"


class EventRelay:
    """Relays one process's EventBus to and from the others sharing the database."""

    def __init__(self, database_url: str, bus: EventBus, store: ImageStore) -> None:
        self.dsn = asyncpg_dsn(database_url)
        self.bus = bus
        self.store = store
        self.origin = uuid.uuid4().hex[:12]
        # Events this relay published, kept (so no other event can take their id) until the
        # forwarder sees them and does not send them back.
        self._relayed: dict[int, JobEvent] = {}
        self._last_progress: dict[int, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self._cleanups: set[concurrent.futures.Future[None]] = set()
        self._reading: set[asyncio.Task[None]] = set()

    async def _forget_preview(self, job_id: int) -> None:
        await asyncio.sleep(PREVIEW_KEPT_SECONDS)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.store.delete, preview_key(job_id))

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._listen(), name="relay-listen"),
            asyncio.create_task(self._forward(), name="relay-forward"),
        ]
        try:
            await asyncio.wait_for(self._ready.wait(), 15)
        except TimeoutError:  # it keeps trying; results are polled meanwhile
            logger.warning("the event relay is not listening yet; carrying on without it")

    async def close(self) -> None:
        for cleanup in list(self._cleanups):
            cleanup.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- out: local events to NOTIFY --------------------------------------------------------

    async def _forward(self) -> None:
        import asyncpg

        async with self.bus.subscribe() as queue:
            connection: Any = None
            try:
                while True:
                    event = await queue.get()
                    if self._relayed.pop(id(event), None) is event:
                        continue
                    try:
                        payload = await asyncio.to_thread(self._payload, event)
                        if payload is None:
                            continue
                        if connection is None or connection.is_closed():
                            connection = await asyncpg.connect(self.dsn, timeout=10)
                        await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
                    except asyncio.CancelledError:
                        raise
                    except Exception as error:  # a hint lost; results are polled anyway
                        logger.warning("could not relay %s: %s", type(event).__name__, error)
                        connection = None
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close()

    def _payload(self, event: JobEvent) -> str | None:
        fields = dataclasses.asdict(event)
        if isinstance(event, JobProgress):
            now = time.monotonic()
            last = event.step >= event.total
            if not last and now - self._last_progress.get(event.job_id, -1e9) < PROGRESS_INTERVAL:
                return None
            self._last_progress[event.job_id] = now
            preview = fields.pop("preview_png")
            fields["preview"] = None
            if preview:
                fields["preview"] = self.store.put(preview_key(event.job_id), preview)
        elif self._last_progress.pop(event.job_id, None) is not None:
            # The job moved on: its last preview is of no use once the others have read it.
            cleanup = asyncio.run_coroutine_threadsafe(
                self._forget_preview(event.job_id), self._loop
            )
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
        return json.dumps({"origin": self.origin, "kind": NAMES[type(event)], **fields})

    # -- in: NOTIFY to local events ---------------------------------------------------------

    async def _listen(self) -> None:
        import asyncpg

        delay = 0.5
        while True:
            try:
                connection = await asyncpg.connect(self.dsn, timeout=10)
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                logger.warning("event relay cannot connect (%s); retrying in %.1f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
                continue
            lost = asyncio.Event()
            try:
                connection.add_termination_listener(functools.partial(_set, lost))
                await connection.add_listener(CHANNEL, self._received)
                delay = 0.5
                self._ready.set()
                await lost.wait()
                logger.warning("event relay lost its connection; reconnecting")
            finally:
                with contextlib.suppress(Exception):
                    await connection.close()

    def _received(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        data = json.loads(payload)
        if data.pop("origin") == self.origin:
            return
        kind = KINDS[data.pop("kind")]
        if kind is JobProgress:
            key = data.pop("preview")
            data["preview_png"] = None
            if key is not None:
                # The store may be remote: read it off the event loop, then publish.
                task = asyncio.get_running_loop().create_task(self._with_preview(data, key))
                self._reading.add(task)
                task.add_done_callback(self._reading.discard)
                return
        self._publish(kind(**data))

    async def _with_preview(self, data: dict[str, Any], key: str) -> None:
        with contextlib.suppress(OSError):
            data["preview_png"] = await asyncio.to_thread(self.store.get, key)
        self._publish(JobProgress(**data))

    def _publish(self, event: JobEvent) -> None:
        if len(self._relayed) > RELAYED_KEPT:  # some were dropped by a full queue: forget
            self._relayed.clear()
        self._relayed[id(event)] = event
        self.bus.publish(event)


def _set(event: asyncio.Event, *_: object) -> None:
    event.set()
