"""Events a worker publishes as a job moves: claimed, progress, done, failed, cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class JobEvent:
    job_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class JobClaimed(JobEvent):
    worker_id: str
    attempt: int


@dataclasses.dataclass(frozen=True, slots=True)
class JobProgress(JobEvent):
    step: int
    total: int
    preview_png: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class JobSucceeded(JobEvent):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class JobFailed(JobEvent):
    error: str


@dataclasses.dataclass(frozen=True, slots=True)
class JobCancelled(JobEvent):
    pass


class EventBus:
    """In-process publish/subscribe; each subscriber has its own bounded queue.

    A slow subscriber loses progress events, never the others: progress is only ever a
    hint, and the job row is the truth.
    """

    def __init__(self, queue_size: int = 256) -> None:
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[JobEvent]] = set()

    def publish(self, event: JobEvent) -> None:
        for queue in self._subscribers:
            if queue.full() and isinstance(event, JobProgress):
                continue
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                logger.warning("event subscriber is slow; dropped its oldest event")
            queue.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[JobEvent]]:
        """A queue that receives every event published while the block runs."""
        queue: asyncio.Queue[JobEvent] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
