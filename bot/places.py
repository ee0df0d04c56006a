"""A live place in line: while a job waits, its message says where it stands and when it
should be done, edited as that changes.

Discord allows a bot about 50 requests a second in all, and results, progress and commands
need their share: the edits of waiting jobs' messages draw on a budget of their own (a token
bucket, ``IMAGINE_PLACE_EDITS_PER_SECOND``), the longest unedited first, each message at most
once per ``IMAGINE_PLACE_INTERVAL`` and only when its text changed, and only while its
interaction token answers. A thousand waiting jobs make at most that many edits a second; the
ones left out this round are edited in a later one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from bot import messages
from generation.outbox import Outbox, exposed, token_valid
from generation.service import GenerationService, Submission
from storage.models import DeliveryState, utcnow
from storage.records import DeliveryRecord, JobRecord

if TYPE_CHECKING:
    from bot.limits import Message

logger = logging.getLogger(__name__)

WATCHED = 1000  # the waiting jobs looked at each round, front first (past them: "1,000+")


class EditBudget:
    """A token bucket: ``rate`` edits a second, at most ``burst`` at once."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def take(self) -> bool:
        """One edit now, if the budget has it."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


Edit = Callable[[DeliveryRecord, "Message"], Awaitable[None]]


class PlaceWatch:
    """Edits waiting jobs' messages with their place in line, within the edit budget."""

    def __init__(
        self,
        service: GenerationService,
        outbox: Outbox,
        edit: Edit,
        *,
        interval: float,
        edits_per_second: float,
        skip: Callable[[JobRecord], bool] = lambda _: False,
    ) -> None:
        self.service = service
        self.outbox = outbox
        self.edit = edit  # a best-effort edit of the job's response (never over a result)
        self.interval = interval
        self.budget = EditBudget(edits_per_second, burst=edits_per_second)
        self.skip = skip  # a job whose message shows something else now (its progress)
        self._shown: dict[int, str] = {}  # job id -> the place text its message shows
        self._edited: dict[int, float] = {}  # job id -> when its message was last edited

    def shown(self, job_id: int, text: str) -> None:
        """The job's message shows ``text`` now (the acknowledgement put it there)."""
        self._shown[job_id] = text
        self._edited[job_id] = time.monotonic()

    async def run(self) -> None:
        # Rounds come every second at most, so the budget is spent as it refills, while each
        # message waits ``interval`` between edits.
        tick = min(self.interval, 1.0)
        while True:
            started = time.monotonic()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database away: the next round tries again
                logger.info("places in line not updated: %s", error)
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))

    async def round(self) -> int:
        """Edit the messages whose place changed, longest unedited first, while the budget
        lasts; how many were edited."""
        waiting = [s for s in await self.service.waiting(None, limit=WATCHED) if s.position]
        self._forget({s.job.id for s in waiting})
        shown = {s.job.id: messages.queued(s) for s in waiting}
        now = utcnow()
        changed = [s for s in waiting if self._due(s.job, shown[s.job.id].content, now)]
        if not changed:
            return 0
        deliveries = await self.outbox.for_jobs([s.job.id for s in changed])
        edited = 0
        for submission in self._longest_stale(changed):
            delivery = deliveries.get(submission.job.id)
            if (
                delivery is None
                or delivery.state != DeliveryState.PENDING
                or not token_valid(delivery, now)
                or exposed(submission.job, delivery)
                or self.skip(submission.job)
            ):
                continue
            if not self.budget.take():
                break  # the rest in a later round, still changed
            message = shown[submission.job.id]
            self.shown(submission.job.id, message.content)
            await self.edit(delivery, message)
            edited += 1
        return edited

    def _due(self, job: JobRecord, text: str, now: dt.datetime) -> bool:
        """Whether the job's message should say ``text`` now: changed, and not edited too
        recently. A job not seen yet is left ``interval`` after it was made: its own
        acknowledgement is on its way with its place (an edit then would say it twice)."""
        if self._shown.get(job.id) == text:
            return False
        edited = self._edited.get(job.id)
        if edited is None:
            return (now - job.created_at).total_seconds() >= self.interval
        return time.monotonic() - edited >= self.interval

    def _longest_stale(self, changed: Sequence[Submission]) -> list[Submission]:
        """The messages edited longest ago first (front of the line first among equals):
        jobs whose ETA changes every round do not keep the budget from the others."""
        return sorted(
            changed, key=lambda s: (self._edited.get(s.job.id, -1e9), s.position, s.job.id)
        )

    def _forget(self, waiting: set[int]) -> None:
        """Jobs no longer waiting need no place."""
        for job_id in [j for j in self._shown if j not in waiting]:
            del self._shown[job_id]
            self._edited.pop(job_id, None)
